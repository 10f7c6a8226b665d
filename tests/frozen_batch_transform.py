"""The training side of ``BatchTransform`` as commit daf4522 had it (before ``data.augment``
became a mapping of operations), frozen: every published number was measured with these draws.
``tests/test_augment.py`` holds the operations to it, bit for bit. Never edit it."""

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from src.data.statistics import pca_offsets, pixel_mean_image


def random_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    b, c, h, w = images.shape
    tops = torch.randint(0, h - crop_size + 1, (b,)).tolist()
    lefts = torch.randint(0, w - crop_size + 1, (b,)).tolist()
    flips = (torch.rand(b) < 0.5).tolist()
    out = images.new_empty((b, c, crop_size, crop_size))
    for i, (top, left, flip) in enumerate(zip(tops, lefts, flips, strict=True)):
        crop = images[i, :, top : top + crop_size, left : left + crop_size]
        out[i] = crop.flip(-1) if flip else crop
    return out


def random_resized_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    b, c = images.shape[:2]
    scale, ratio = [0.08, 1.0], [3 / 4, 4 / 3]
    boxes = [RandomResizedCrop.get_params(images[0], scale, ratio) for _ in range(b)]
    flips = (torch.rand(b) < 0.5).tolist()
    out = images.new_empty((b, c, crop_size, crop_size))
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips, strict=True)):
        crop = F.resized_crop(images[i], top, left, h, w, [crop_size, crop_size], antialias=True)
        out[i] = crop.flip(-1) if flip else crop
    return out


def training_inputs(
    images: torch.Tensor,
    crop_size: int,
    mean: list[float],
    std: list[float],
    input_scale: str,
    train_crop: str,
    pca_noise: float,
    statistics: dict[str, torch.Tensor] | None,
) -> torch.Tensor:
    """``BatchTransform(...)(images, "train")`` of commit daf4522, with ``augment=True``."""
    if input_scale == "mean_image":
        images = images.to(torch.float32) - pixel_mean_image(statistics["mean_image"])
    crops = random_crops if train_crop == "random" else random_resized_crops
    images = crops(images, crop_size)
    if input_scale == "mean_image":
        x = images.to(torch.float32)
    else:
        if input_scale == "raw":
            std = [1 / 255] * len(mean)
        x = F.normalize(F.to_dtype(images, torch.float32, scale=True), list(mean), list(std), True)
    if pca_noise:
        offset = pca_offsets(len(images), statistics["eigvals"], statistics["eigvecs"], pca_noise)
        scale = 1 / torch.tensor(std, dtype=torch.float32)
        if input_scale != "standardised":
            scale = torch.full((3,), 255.0)
        x = x + (offset * scale).to(x.device, x.dtype)[:, :, None, None]
    return x
