"""The one image loader that training, the decode-once cache and prediction share."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# 16-bit greyscale as Pillow opens it (PNG, TIFF); "I" is 32-bit but holds 16-bit data there.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, whatever the mode: transparency is composited onto white, and 16-bit data is
    scaled to 8 bits (divided by 257), where Pillow's own conversion would clip it at 255."""
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, upright as its EXIF orientation says."""
    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))
