"""The paper's crops, flips and normalisation applied to whole uint8 batches on the device the
model runs on (a GPU where there is one; the CPU works too), after the batch left the loader.

Same distributions and the same arithmetic as the per-image transforms of transforms.py: crops
and flips are drawn like ``v2.RandomCrop`` + ``v2.RandomHorizontalFlip``, and normalisation calls
torchvision's own functions, so a centre crop here equals the per-image path's bit for bit.
"""

from collections.abc import Sequence

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F


def random_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """A ``crop_size`` crop of each image of ``images`` (B, C, H, W), at offsets uniform over
    [0, H - crop] x [0, W - crop], mirrored left-right with probability 1/2, each image on its own.

    Offsets and flips come from the CPU's default generator, which the run's seed sets: slicing
    needs them as numbers, and drawing them on a GPU would make the CPU wait for it every batch.
    One slice per image is 10-20x faster on the CPU than one batched gather, measured at
    128 x 256 -> 224; on a GPU the slices are queued without waiting.
    """
    b, c, h, w = images.shape
    if crop_size > min(h, w):
        raise ValueError(f"crop_size={crop_size} is larger than the {h}x{w} images")
    tops = torch.randint(0, h - crop_size + 1, (b,)).tolist()
    lefts = torch.randint(0, w - crop_size + 1, (b,)).tolist()
    flips = (torch.rand(b) < 0.5).tolist()
    out = images.new_empty((b, c, crop_size, crop_size))
    for i, (top, left, flip) in enumerate(zip(tops, lefts, flips, strict=True)):
        crop = images[i, :, top : top + crop_size, left : left + crop_size]
        out[i] = crop.flip(-1) if flip else crop
    return out


def random_resized_crops(
    images: torch.Tensor,
    crop_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """``v2.RandomResizedCrop(crop_size)`` + ``v2.RandomHorizontalFlip()`` for each image of
    ``images`` (B, C, H, W) on its own: the training crop of the seed article's recipe.

    Boxes are drawn by torchvision's own ``get_params`` (the draws v2's transform makes), flips
    after them, all from the CPU's default generator as in ``random_crops``; each box is resized
    with antialiasing, as the per-image path resizes it.
    """
    b, c = images.shape[:2]
    boxes = [RandomResizedCrop.get_params(images[0], list(scale), list(ratio)) for _ in range(b)]
    flips = (torch.rand(b) < 0.5).tolist()
    out = images.new_empty((b, c, crop_size, crop_size))
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips, strict=True)):
        crop = F.resized_crop(images[i], top, left, h, w, [crop_size, crop_size], antialias=True)
        out[i] = crop.flip(-1) if flip else crop
    return out


def centre_crop(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """The centre ``crop_size`` square, placed as ``v2.CenterCrop`` places it."""
    h, w = images.shape[-2:]
    top, left = int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0))
    return images[..., top : top + crop_size, left : left + crop_size]


def ten_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(B, 10, C, crop, crop): the four corners and the centre, then the same five of the
    mirrored image, in ``v2.TenCrop``'s order."""
    h, w = images.shape[-2:]

    def five(x: torch.Tensor) -> list[torch.Tensor]:
        corners = [(0, 0), (0, w - crop_size), (h - crop_size, 0), (h - crop_size, w - crop_size)]
        crops = [x[..., t : t + crop_size, s : s + crop_size] for t, s in corners]
        return [*crops, centre_crop(x, crop_size)]

    return torch.stack(five(images) + five(images.flip(-1)), dim=1)


def normalise(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    input_scale: str = "standardised",
    offset: torch.Tensor | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (..., C, H, W) to float32 as transforms.py does it: ``standardised``
    (x / 255 - mean) / std, ``raw`` x - 255 mean (mean and std on the 0-1 scale); ``mean_image``
    takes float pixels whose mean image was already subtracted (before cropping) as they are.

    ``offset`` (B, C), if given, is added to every pixel of each image after normalisation: the
    hook for per-image colour noise such as the paper's PCA lighting noise (section 4.1).
    ``channels_last`` returns NHWC memory, which convolutions on a GPU prefer.
    """
    if input_scale == "mean_image":
        x = images.to(torch.float32)
    else:
        if input_scale == "raw":
            std = [1 / 255] * len(mean)
        x = F.normalize(F.to_dtype(images, torch.float32, scale=True), list(mean), list(std), True)
    if offset is not None:
        # not in place: with mean_image, x may be the caller's tensor
        x = x + offset.to(x.device, x.dtype)[:, :, None, None]
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
