"""The one image loader and lister: every file found the same way, decoded to 8-bit RGB and
turned into the uint8 square that both input paths deliver, and a check of every file before
training starts."""

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as F

from src.utils.io import atomic_write

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# 16-bit and 32-bit integer greyscale: scaled from 0..65535 to 0..255 (257 = 65535 / 255).
_WIDE_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully as 8-bit RGB: EXIF rotation applied, transparency composited onto
    white, 16-bit greyscale scaled to 8 bits (not clipped), any other mode converted.

    ``Image.open`` alone succeeds on a truncated file; ``load()`` decodes every pixel, so a broken
    file fails here and not in the middle of an epoch.
    """
    with Image.open(path) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode in _WIDE_GREY:
            wide = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((wide.clip(0, 65535) / 257).round().astype(np.uint8), "L")
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("RGBA", "LA", "PA"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        # no copy of what is RGB already (convert and exif_transpose would each make one)
        return image if image.mode == "RGB" else image.convert("RGB")


def square(image: Image.Image, size: int) -> np.ndarray:
    """uint8 (3, S, S): the short side resized to ``size`` (bilinear, antialiased), then the
    centre square, as ``v2.Resize(size)`` + ``v2.CenterCrop(size)`` do it on a uint8 tensor.

    torchvision's tensor path, not Pillow's: on a 500x375 JPEG its uint8 kernel resizes in 0.9 ms
    against Pillow's 2.0 ms (within one grey level of it), measured on this project's CPU, and
    the resize is most of what the pil backend's workers do. Channels first, as the network
    takes them: per-image crops of a batch then copy whole rows.
    """
    pixels = F.pil_to_tensor(image)
    height, width = pixels.shape[-2:]
    short, long = sorted((height, width))
    if short != size:
        long = int(size * long / short)  # as torchvision rounds it
        pixels = F.resize(pixels, [size, long] if height <= width else [long, size])
    return F.center_crop(pixels, [size, size]).contiguous().numpy()


def load_square(path: str | Path, size: int) -> np.ndarray:
    """The uint8 (3, S, S) square of a file, as both input paths deliver it."""
    return square(load_rgb(path), size)


@dataclass(frozen=True)
class ImageSet:
    """The images of one split in label order, and the names its cache and statistics files
    take: a split folder (``root/train``), a file list under a flat folder of classes, or the
    rows of a label file."""

    name: str
    base: Path  # the files are keyed by their paths relative to it
    classes: list[str]
    samples: list[tuple[str, int]]

    @classmethod
    def of_folder(cls, split_dir: str | Path) -> "ImageSet":
        """A folder of class folders, labelled as ``ImageFolder`` labels it (sorted names)."""
        split_dir = Path(split_dir)
        classes = class_folders(split_dir)
        label = {name: i for i, name in enumerate(classes)}
        samples = [
            (str(path), label[parts[0]])
            for path in image_files(split_dir)
            if len(parts := path.relative_to(split_dir).parts) > 1 and parts[0] in label
        ]
        return cls(f"{split_dir.parent.name}-{split_dir.name}", split_dir, classes, samples)

    def relative_paths(self) -> list[str]:
        return [relative_to(path, self.base) for path, _ in self.samples]


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def as_image_set(source: str | Path | ImageSet) -> ImageSet:
    return source if isinstance(source, ImageSet) else ImageSet.of_folder(source)


def relative_to(path: str | Path, base: Path) -> str:
    """``path`` relative to ``base``, as a POSIX path, or absolute where it lies elsewhere (a
    label file may name files anywhere)."""
    path = Path(path)
    return (path.relative_to(base) if path.is_relative_to(base) else path.absolute()).as_posix()


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, at any depth, sorted by path: the one way this project
    lists images (class folders, flat folders, caches, prediction)."""
    return sorted(
        p for p in Path(folder).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
    )


def problem_with(path: str | Path) -> str | None:
    """What is wrong with the file, or None if it decodes."""
    try:
        load_rgb(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a verdict on the file
        return f"{type(err).__name__}: {err}"
    return None


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_verdicts(cache_file: Path) -> dict[str, list]:
    try:
        return json.loads(cache_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_verdicts(cache_file: Path, verdicts: dict[Path, str | None]) -> None:
    """Store verdicts found elsewhere (the decode-once cache decodes every file anyway), so
    ``find_bad_images`` does not decode those files again."""
    cached = _read_verdicts(cache_file)
    cached |= {str(p): [*_stamp(p), problem] for p, problem in verdicts.items()}
    atomic_write(cache_file, json.dumps(cached))


def find_bad_images(paths: Sequence[Path], cache_file: Path) -> dict[Path, str]:
    """Decode every file once and return the broken ones with what is wrong with each.

    Verdicts are kept in ``cache_file`` by path, size and modification time, so a file is decoded
    again only when it changes: the second run over the same data pays a ``stat`` per file.
    """
    cached = _read_verdicts(cache_file)
    stamps = {str(p): _stamp(p) for p in paths}
    todo = [p for p in paths if cached.get(str(p), [None])[:2] != stamps[str(p)]]
    if todo:
        log.info("Checking %d of %d images (decoding each once)", len(todo), len(paths))
        # PIL decodes with the interpreter lock released: threads use every core.
        with ThreadPoolExecutor() as pool:
            for path, problem in zip(todo, pool.map(problem_with, todo), strict=True):
                cached[str(path)] = [*stamps[str(path)], problem]
        atomic_write(cache_file, json.dumps({str(p): cached[str(p)] for p in paths}))
    return {p: cached[str(p)][2] for p in paths if cached[str(p)][2] is not None}


def root_record(cache_dir: str | Path, root: str | Path, kind: str) -> Path:
    """Where what is known about the files under ``root`` is kept (``verified``: the verdicts on
    them; ``splits``: the last split of a flat folder): in the cache folder, named by the root's
    absolute path, never inside the user's data."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / kind / f"{Path(root).name}-{key}.json"
