"""Every crop, flip, ten-crop, normalisation, mean image and PCA colour offset of the paper
(sections 2 and 4.1), applied once, to whole uint8 batches, on the device the model runs on.

Both input paths (``data.backend``) and CIFAR-10 deliver the same thing, uint8 squares
(B, 3, S, S) of ``data.resize_size``, and the data module calls ``BatchTransform`` on them in
``on_after_batch_transfer``; ``src.predict`` and Figure 4 call the same object, built from the
checkpoint. A new augmentation is written once, here.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

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
# where the centre crop is among an image's ten crops (four corners, the centre, then mirrored)
CENTRE_CROP = 4


def random_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """A ``crop_size`` crop of each image of ``images`` (B, C, H, W), at offsets uniform over
    [0, H - crop] x [0, W - crop], mirrored left-right with probability 1/2, each image on its own:
    the distribution of ``v2.RandomCrop`` + ``v2.RandomHorizontalFlip``.

    Offsets and flips come from the CPU's default generator, which the run's seed sets and
    checkpoints carry: slicing needs them as numbers, and drawing them on a GPU would make the
    CPU wait for it every batch. One slice per image is 10-20x faster on the CPU than one batched
    gather, measured at 128 x 256 -> 224; on a GPU the slices are queued without waiting.
    """
    b, c, h, w = images.shape
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
    ``images`` (B, C, H, W) on its own: the training crop of the seed article's recipe. Boxes are
    drawn by torchvision's own ``get_params``, flips after them, from the CPU's default generator
    as in ``random_crops``; each box is resized with antialiasing."""
    b, c = images.shape[:2]
    boxes = [RandomResizedCrop.get_params(images[0], list(scale), list(ratio)) for _ in range(b)]
    flips = (torch.rand(b) < 0.5).tolist()
    out = images.new_empty((b, c, crop_size, crop_size))
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips, strict=True)):
        crop = F.resized_crop(images[i], top, left, h, w, [crop_size, crop_size], antialias=True)
        out[i] = crop.flip(-1) if flip else crop
    return out


def ten_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(B, 10, C, crop, crop): torchvision's ten crops of every image of the batch."""
    return torch.stack(F.ten_crop(images, [crop_size, crop_size]), dim=1)


def offset_scale(std: Sequence[float], input_scale: str) -> torch.Tensor:
    """(3,): what turns a 0-1 scale colour offset into the units of the network's input."""
    if input_scale == "standardised":
        return 1 / torch.tensor(std, dtype=torch.float32)
    return torch.full((3,), 255.0)


def normalise(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    input_scale: str = "standardised",
    offset: torch.Tensor | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (..., C, H, W) to float32: ``standardised`` (x / 255 - mean) / std, ``raw``
    x - 255 mean (mean and std on the 0-1 scale); ``mean_image`` takes float pixels whose mean
    image was already subtracted (before cropping) as they are.

    ``offset`` (B, C), if given, is added to every pixel of each image after normalisation (the
    paper's PCA colour noise). ``channels_last`` returns NHWC memory, which GPUs prefer.
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


def unnormalise(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], input_scale: str
) -> torch.Tensor:
    """Network inputs back to displayable 0-1 pixels; ``mean_image`` inputs are shown as ``raw``
    ones, ``mean`` standing in for the mean image, whose place in a crop is not known here."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    pixel_scale = input_scale in ("raw", "mean_image")
    pixels = images / 255 + mean_t if pixel_scale else images * std_t + mean_t
    return pixels.clamp(0, 1)


@dataclass
class BatchTransform:
    """uint8 squares (B, 3, S, S) to the network's float input, per stage: random crops and
    flips for ``train`` (and with ``augment_val`` for ``val`` and ``test``), the centre crop
    otherwise, or ten crops (B, 10, 3, C, C) where asked; the mean image is subtracted before
    any crop, the PCA colour offset added to training images after normalisation.

    ``statistics`` (``mean_image``, ``eigvals``, ``eigvecs`` of the training set) is needed only
    by ``input_scale="mean_image"`` and ``pca_noise``; checkpoints carry it.
    """

    crop_size: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    input_scale: str = "standardised"
    augment: bool = True
    train_crop: str = "random"
    augment_val: bool = False
    pca_noise: float = 0.0
    statistics: Mapping[str, torch.Tensor] | None = None
    _mean_image: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls, data: Mapping[str, Any], statistics: Mapping[str, torch.Tensor] | None
    ) -> "BatchTransform":
        """From a data module's settings (its hparams, or a checkpoint's)."""
        keys = ("crop_size", "mean", "std", "input_scale", "augment", "train_crop")
        return cls(
            **{k: data[k] for k in keys},
            augment_val=data["augment_val"],
            pca_noise=data["pca_noise"],
            statistics=statistics,
        )

    def __post_init__(self) -> None:
        needs = self.input_scale == "mean_image" or self.pca_noise
        if needs and self.statistics is None:
            raise ValueError(
                "data.input_scale=mean_image and data.pca_noise need the training set's "
                "statistics, which the data module measures (or a checkpoint carries)"
            )

    def mean_image_on(self, device: torch.device) -> torch.Tensor:
        """The 0-255 mean image on ``device``, moved there once."""
        if self._mean_image is None or self._mean_image.device != device:
            self._mean_image = pixel_mean_image(self.statistics["mean_image"]).to(device)
        return self._mean_image

    def __call__(
        self,
        images: torch.Tensor,
        stage: str,
        ten_crop: bool = False,
        channels_last: bool = False,
    ) -> torch.Tensor:
        if images.device.type != "cpu":
            return self.apply(images, stage, ten_crop, channels_last)
        # On the CPU the loader's workers already fill the cores: one thread does this
        # element-wise work with half the CPU time of two (same result, element by element),
        # measured with the pil backend's workers running
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.apply(images, stage, ten_crop, channels_last)
        finally:
            torch.set_num_threads(threads)

    def apply(
        self, images: torch.Tensor, stage: str, ten_crop: bool, channels_last: bool
    ) -> torch.Tensor:
        if self.input_scale == "mean_image":
            images = images.to(torch.float32) - self.mean_image_on(images.device)
        augmented = stage == "train" or (self.augment_val and stage in ("val", "test"))
        if ten_crop:
            images = ten_crops(images, self.crop_size)
        elif self.augment and augmented:
            crops = random_crops if self.train_crop == "random" else random_resized_crops
            images = crops(images, self.crop_size)
        else:
            images = F.center_crop(images, [self.crop_size, self.crop_size])
        offset = None
        if stage == "train" and self.pca_noise:
            stats = self.statistics
            offset = pca_offsets(len(images), stats["eigvals"], stats["eigvecs"], self.pca_noise)
            offset = offset * offset_scale(self.std, self.input_scale)
        return normalise(images, self.mean, self.std, self.input_scale, offset, channels_last)

    def pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """Network inputs back to displayable 0-1 pixels (see ``unnormalise``)."""
        return unnormalise(inputs, self.mean, self.std, self.input_scale)
