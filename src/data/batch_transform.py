"""The one batch transform: uint8 squares to the network's input, on whole batches, on the
device the model runs on (paper, sections 2 and 4.1).

Both input paths (``data.backend``) and CIFAR-10 deliver the same thing, uint8 squares
(B, 3, S, S) of ``data.resize_size``, and the data module calls ``BatchTransform`` on them in
``on_after_batch_transfer``; ``src.predict``, ``src.export`` and Figure 4 use the evaluation side
of the same object, built from the checkpoint. In order:

1. the training set's mean image subtracted, with ``data.input_scale=mean_image``;
2. training batches: the operations of ``data.augment`` that run on the pixels (the crops, a
   torchvision transform; ``src.data.augment``); evaluation: the centre crop or ten crops;
3. a centre crop of whatever is still larger than ``data.crop_size``;
4. normalisation;
5. training batches: the operations that run on the normalised input (PCA colour noise, Cutout).

A new augmentation is a ``BatchOperation`` of its own module and an entry of ``data.augment``:
nothing here changes.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torchvision.transforms.v2 import functional as F

from src.data.augment import NORMALISED, PIXELS, BatchOperation
from src.data.statistics import pixel_mean_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# standardised: (x - mean) / std; raw: section 2 of the paper, only the mean subtracted, at the
# 0-255 pixel scale (std is then ignored); mean_image: the paper's own, the training set's mean
# image subtracted at the 0-255 scale before cropping (mean and std are not used)
INPUT_SCALES = ("standardised", "raw", "mean_image")
# where the centre crop is among an image's ten crops (four corners, the centre, then mirrored)
CENTRE_CROP = 4
# the stages whose batches get the training operations (val and test only with augment_val)
TRAIN = "train"


def ten_crops(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(B, 10, C, crop, crop): torchvision's ten crops of every image of the batch."""
    return torch.stack(F.ten_crop(images, [crop_size, crop_size]), dim=1)


def normalise(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    input_scale: str = "standardised",
) -> torch.Tensor:
    """uint8 (..., C, H, W) to float32: ``standardised`` (x / 255 - mean) / std, ``raw``
    x - 255 mean (mean and std on the 0-1 scale); ``mean_image`` takes float pixels whose mean
    image was already subtracted (before cropping) as they are."""
    if input_scale == "mean_image":
        return images.to(torch.float32)
    if input_scale == "raw":
        std = [1 / 255] * len(mean)
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), list(mean), list(std), True)


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
    """uint8 squares (B, 3, S, S) to the network's float input, per stage: the training
    ``operations`` (``src.data.augment``) for ``train`` batches, and with ``augment_val`` for
    ``val`` and ``test`` ones; otherwise the centre crop, or ten crops (B, 10, 3, C, C) where
    asked. Without operations it is the evaluation transform: what ``src.predict`` and
    ``src.export`` reproduce.

    ``statistics`` (``mean_image``, ``eigvals``, ``eigvecs`` of the training set) is needed by
    ``input_scale="mean_image"`` and by operations that say so (PCA colour noise); checkpoints
    carry it.
    """

    crop_size: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    input_scale: str = "standardised"
    operations: Sequence[BatchOperation] = ()
    augment_val: bool = False
    statistics: Mapping[str, torch.Tensor] | None = None
    _mean_image: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        needs = self.input_scale == "mean_image" or any(
            op.needs_statistics for op in self.operations
        )
        if needs and self.statistics is None:
            raise ValueError(
                "data.input_scale=mean_image and PCA colour noise need the training set's "
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

    def augments(self, stage: str) -> bool:
        return stage == TRAIN or (self.augment_val and stage in ("val", "test"))

    def apply(
        self, images: torch.Tensor, stage: str, ten_crop: bool, channels_last: bool
    ) -> torch.Tensor:
        if self.input_scale == "mean_image":
            images = images.to(torch.float32) - self.mean_image_on(images.device)
        operations = self.operations if self.augments(stage) and not ten_crop else ()
        if ten_crop:
            images = ten_crops(images, self.crop_size)
        for op in operations:
            if op.runs_on == PIXELS:
                images = op(images, self)
        if images.shape[-2:] != (self.crop_size, self.crop_size):
            images = F.center_crop(images, [self.crop_size, self.crop_size])
        x = normalise(images, self.mean, self.std, self.input_scale)
        for op in operations:
            if op.runs_on == NORMALISED:
                x = op(x, self)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """Network inputs back to displayable 0-1 pixels (see ``unnormalise``)."""
        return unnormalise(inputs, self.mean, self.std, self.input_scale)
