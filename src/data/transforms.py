"""The paper's preprocessing (section 2 and 4.1) as torchvision transforms."""

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from src.data.statistics import pca_offsets, pixel_mean_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# standardised: (x - mean) / std; raw: section 2 of the paper, only the mean subtracted, at the
# 0-255 pixel scale (std is then ignored); mean_image: the paper's own, the training set's mean
# image subtracted at the 0-255 scale before cropping (mean and std are not used)
INPUT_SCALES = ("standardised", "raw", "mean_image")
# random: the paper's crop_size crop of the resize_size square; random_resized: torchvision's
# RandomResizedCrop of it (scale 0.08-1, ratio 3/4-4/3), as the seed article trained
TRAIN_CROPS = ("random", "random_resized")


class SubtractImage:
    """Float 0-255 pixels minus the training mean image (0-1 scale), before any crop, so every
    crop and flip sees the matching part of it. A class, not a lambda: workers pickle it."""

    def __init__(self, mean_image: torch.Tensor) -> None:
        self.image = pixel_mean_image(mean_image)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image - self.image


class ColourNoise:
    """The paper's PCA colour noise (section 4.1): one RGB offset per image and draw, added to
    every pixel of the normalised image, converted to its scale."""

    def __init__(
        self,
        eigvals: torch.Tensor,
        eigvecs: torch.Tensor,
        sigma: float,
        std: Sequence[float],
        input_scale: str,
    ) -> None:
        self.eigvals, self.eigvecs, self.sigma = eigvals, eigvecs, sigma
        self.scale = offset_scale(std, input_scale)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        offset = pca_offsets(1, self.eigvals, self.eigvecs, self.sigma)[0] * self.scale
        return image + offset[:, None, None]


def offset_scale(std: Sequence[float], input_scale: str) -> torch.Tensor:
    """(3,): what turns a 0-1 scale colour offset into the units of the network's input."""
    if input_scale == "standardised":
        return 1 / torch.tensor(std, dtype=torch.float32)
    return torch.full((3,), 255.0)


def _square(
    resize_size: int, input_scale: str, mean_image: torch.Tensor | None
) -> list[v2.Transform]:
    resize = [v2.Resize(resize_size), v2.CenterCrop(resize_size)]
    if input_scale != "mean_image":
        return resize
    if mean_image is None:
        raise ValueError("input_scale='mean_image' needs the training set's mean image")
    return [*resize, v2.ToImage(), v2.ToDtype(torch.float32), SubtractImage(mean_image)]


def _to_tensor(mean: Sequence[float], std: Sequence[float], input_scale: str) -> list[v2.Transform]:
    if input_scale == "mean_image":
        return []  # a float tensor since _square
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
    mean_image: torch.Tensor | None = None,
    colour_noise: ColourNoise | None = None,
) -> v2.Compose:
    """Short side to ``resize_size``, centre square, then a random ``crop_size`` crop and a
    random horizontal flip: the paper's 2048-fold augmentation (``train_crop="random"``), and
    its colour noise if given."""
    crop = v2.RandomCrop(crop_size) if train_crop == "random" else v2.RandomResizedCrop(crop_size)
    return v2.Compose(
        [
            *_square(resize_size, input_scale, mean_image),
            crop,
            v2.RandomHorizontalFlip(),
            *_to_tensor(mean, std, input_scale),
            *([colour_noise] if colour_noise is not None else []),
        ]
    )


def eval_transform(
    resize_size: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    input_scale: str = "standardised",
    ten_crop: bool = False,
    mean_image: torch.Tensor | None = None,
) -> v2.Compose:
    """The centre crop, or with ``ten_crop`` the four corners, the centre and their mirror images
    stacked as one (10, C, H, W) tensor per image."""
    square = _square(resize_size, input_scale, mean_image)
    if not ten_crop:
        return v2.Compose([*square, v2.CenterCrop(crop_size), *_to_tensor(mean, std, input_scale)])
    # TenCrop yields a tuple; the tensor transforms map over it, torch.stack joins the crops.
    return v2.Compose(
        [*square, v2.TenCrop(crop_size), *_to_tensor(mean, std, input_scale), torch.stack]
    )
