"""The paper's preprocessing (section 2 and 4.1) as torchvision transforms."""

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# standardised: (x - mean) / std; raw: section 2 of the paper, only the mean subtracted, at the
# 0-255 pixel scale (std is then ignored)
INPUT_SCALES = ("standardised", "raw")
# random: the paper's crop_size crop of the resize_size square; random_resized: torchvision's
# RandomResizedCrop of it (scale 0.08-1, ratio 3/4-4/3), as the seed article trained
TRAIN_CROPS = ("random", "random_resized")


def _to_tensor(mean: Sequence[float], std: Sequence[float], input_scale: str) -> list[v2.Transform]:
    # mean and std are on the 0-1 scale; dividing by 1/255 restores the pixel scale
    std = [1 / 255] * len(mean) if input_scale == "raw" else std
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(
    resize_size: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    input_scale: str = "standardised",
    train_crop: str = "random",
) -> v2.Compose:
    """Short side to ``resize_size``, centre square, then a random ``crop_size`` crop and a
    random horizontal flip: the paper's 2048-fold augmentation (``train_crop="random"``)."""
    crop = v2.RandomCrop(crop_size) if train_crop == "random" else v2.RandomResizedCrop(crop_size)
    return v2.Compose(
        [
            v2.Resize(resize_size),
            v2.CenterCrop(resize_size),
            crop,
            v2.RandomHorizontalFlip(),
            *_to_tensor(mean, std, input_scale),
        ]
    )


def eval_transform(
    resize_size: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    input_scale: str = "standardised",
    ten_crop: bool = False,
) -> v2.Compose:
    """The centre crop, or with ``ten_crop`` the four corners, the centre and their mirror images
    stacked as one (10, C, H, W) tensor per image."""
    resize = [v2.Resize(resize_size), v2.CenterCrop(resize_size)]
    if not ten_crop:
        return v2.Compose([*resize, v2.CenterCrop(crop_size), *_to_tensor(mean, std, input_scale)])
    # TenCrop yields a tuple; the tensor transforms map over it, torch.stack joins the crops.
    return v2.Compose(
        [*resize, v2.TenCrop(crop_size), *_to_tensor(mean, std, input_scale), torch.stack]
    )
