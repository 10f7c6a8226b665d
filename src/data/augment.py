"""Training augmentations: the operations of ``data.augment``, each applied to a whole batch on
the device the model runs on, inside the one ``BatchTransform``.

``data.augment`` is a mapping, name -> ``{_target_: CLASS, ...its arguments}``, applied in its
order to every training batch (and, with ``data.augment_val``, to validation and test batches)::

    data.augment:
      crop: {_target_: src.data.augment.RandomCrop}       # the paper's random crop
      flip: {_target_: src.data.augment.HorizontalFlip}   # and its mirror images

``~data.augment.flip`` (or ``data.augment.flip=null``) removes one, ``+data/augment=cutout`` or
``+data.augment.NAME={_target_: ...}`` adds one (at the end), ``data.augment=null`` trains without
any. An entry's ``order``, a number, moves it: entries run by their order, which is their
position in the mapping (0, 1, 2, ...) unless they give one (``data.augment.cutout.order=0.5``
puts Cutout between the first two).

Where an operation runs (``runs_on``):

- ``pixels``: on the squares before normalisation, after the training set's mean image was
  subtracted where ``data.input_scale=mean_image`` (uint8 0-255 squares otherwise; float, about
  -128 to 128, with the mean image). The crops run here; whatever is still larger than
  ``data.crop_size`` after them is centre-cropped.
- ``normalised``: on the network's float input, after normalisation, as the paper's PCA colour
  noise is added.

Every operation draws its random numbers per image from torch's default CPU generator, which the
run's seed sets and checkpoints carry, so a resumed run draws what an unbroken one would have.
Any torchvision v2 transform may be listed as it is: it runs on the pixels, image by image, each
image with its own draw (``PerImage``). Ten crops, the centre crop and normalisation are the
evaluation side, in ``src.data.batch_transform``: an operation never reaches ``src.predict``,
``src.export`` or a checkpoint's evaluation transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from hydra.utils import instantiate
from torchvision.transforms import RandomResizedCrop as TorchvisionRandomResizedCrop
from torchvision.transforms.v2 import functional as F

from src.data.statistics import pca_offsets
from src.utils import ConfigError

if TYPE_CHECKING:
    from src.data.batch_transform import BatchTransform

PIXELS, NORMALISED = "pixels", "normalised"
# an entry's place in the list, where it is not its place in the mapping
ORDER = "order"
# The default of every data module: the paper's random crop and its mirror images (section 4.1)
CROPS_AND_FLIPS: dict[str, dict[str, Any]] = {
    "crop": {"_target_": "src.data.augment.RandomCrop"},
    "flip": {"_target_": "src.data.augment.HorizontalFlip"},
}


class BatchOperation:
    """One training augmentation of a whole batch: ``__call__(images, transform)`` returns the
    augmented batch, drawing per image from torch's default generator. ``transform`` is the
    ``BatchTransform`` running it: its ``crop_size``, ``mean``, ``std``, ``input_scale`` and
    ``statistics`` (the training set's mean image and RGB principal components, where
    ``needs_statistics``)."""

    runs_on: ClassVar[str] = PIXELS
    needs_statistics: ClassVar[bool] = False

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _whole(value: Any, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what}={value!r} must be a whole number of at least {low}")
    return value


def _probability(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{what}={value!r} must be a probability, from 0 to 1")
    return float(value)


def on_device(drawn: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn on the CPU, on ``device`` without the host waiting: from pinned memory,
    asynchronously, where that is a GPU."""
    if device.type != "cuda":
        return drawn.to(device)
    return drawn.pin_memory().to(device, non_blocking=True)


class RandomCrop(BatchOperation):
    """The paper's training crop (section 4.1): a ``data.crop_size`` crop of each square at
    offsets uniform over [0, S - crop] on each axis, the distribution of ``v2.RandomCrop``.

    Draws all the batch's tops, then all its lefts, from the CPU generator (a draw on a GPU
    would be read back to the host), then cuts every crop in one batched gather on the device,
    one kernel on a GPU instead of one per image: an index into the view of every window of
    every square. On the CPU it costs 1.1-1.6x a slice per image (measured at 128 x 256 -> 224);
    the crops are the slices' bit for bit (tests/test_augment.py).
    """

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        b, _, h, w = images.shape
        size = transform.crop_size
        tops = on_device(torch.randint(0, h - size + 1, (b,)), images.device)
        lefts = on_device(torch.randint(0, w - size + 1, (b,)), images.device)
        windows = images.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H', W', size, size)
        batch = torch.arange(b, device=images.device)
        return windows.permute(0, 2, 3, 1, 4, 5)[batch, tops, lefts]


class RandomResizedCrop(BatchOperation):
    """torchvision's ``RandomResizedCrop(data.crop_size)`` of each square on its own: a box of
    ``scale`` of the area (8-100 %) and aspect ratio ``ratio`` (3/4-4/3), resized with
    antialiasing, as the seed article trained. Boxes are drawn by torchvision's own
    ``get_params``, image by image.

    Resized per image, not batched: ``torchvision.ops.roi_align`` (one kernel for the batch)
    has no antialiasing, so its pixels would differ from the seed article's, and on the CPU it
    took 7x longer (350 against 52 ms for 128 crops of 256 -> 224 px, one thread);
    ``bench/augment_cost.py`` measures this crop's cost."""

    def __init__(
        self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
    ) -> None:
        for key, pair in (("scale", scale), ("ratio", ratio)):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ConfigError(f"{key}={list(pair)} must be two numbers, 0 < low <= high")
        self.scale, self.ratio = [float(s) for s in scale], [float(r) for r in ratio]

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        b, c = images.shape[:2]
        size = [transform.crop_size] * 2
        get_box = TorchvisionRandomResizedCrop.get_params
        boxes = [get_box(images[0], self.scale, self.ratio) for _ in range(b)]
        out = images.new_empty((b, c, *size))
        for i, (top, left, h, w) in enumerate(boxes):
            out[i] = F.resized_crop(images[i], top, left, h, w, size, antialias=True)
        return out


class HorizontalFlip(BatchOperation):
    """Each image mirrored left-right with probability ``p`` (the paper's reflections, section
    4.1), the distribution of ``v2.RandomHorizontalFlip``. Draws one number per image."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p, "p")

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        flips = on_device(torch.rand(len(images)) < self.p, images.device)
        return torch.where(flips[:, None, None, None], images.flip(-1), images)


def offset_scale(std: Sequence[float], input_scale: str) -> torch.Tensor:
    """(3,): what turns a 0-1 scale colour offset into the units of the network's input."""
    if input_scale == "standardised":
        return 1 / torch.tensor(std, dtype=torch.float32)
    return torch.full((3,), 255.0)


class PCANoise(BatchOperation):
    """The paper's PCA colour noise (section 4.1): each image gets the RGB offset
    sum_i alpha_i lambda_i p_i over the training pixels' principal components, alpha_i ~
    N(0, ``std``) drawn per image (``randn(B, 3)`` once per batch), added to every pixel after
    normalisation, in the input's units. The paper used 0.1."""

    runs_on = NORMALISED
    needs_statistics = True

    def __init__(self, std: float = 0.1) -> None:
        if isinstance(std, bool) or not isinstance(std, int | float) or not 0 <= std < math.inf:
            raise ConfigError(f"std={std!r} must be a standard deviation: a number, 0 or more")
        self.std = float(std)

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        stats = transform.statistics
        offset = pca_offsets(len(images), stats["eigvals"], stats["eigvecs"], self.std)
        offset = offset * offset_scale(transform.std, transform.input_scale)
        return images + on_device(offset, images.device).to(images.dtype)[:, :, None, None]


class Cutout(BatchOperation):
    """Cutout (DeVries and Taylor, 2017): one ``size`` x ``size`` square of each image set to 0,
    its centre uniform over the image, so that it may be clipped at the border. Runs after
    normalisation, where 0 is the mean colour (or, with ``mean_image``, the mean image)."""

    runs_on = NORMALISED

    def __init__(self, size: int = 16) -> None:
        self.size = _whole(size, 1, "size")

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        b, _, h, w = images.shape
        centre_y = torch.randint(0, h, (b,))
        centre_x = torch.randint(0, w, (b,))
        top, left = centre_y - self.size // 2, centre_x - self.size // 2
        rows, cols = torch.arange(h), torch.arange(w)
        inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + self.size)
        inside_cols = (cols >= left[:, None]) & (cols < left[:, None] + self.size)
        square = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        return images.masked_fill(on_device(square, images.device), 0)


class PerImage(BatchOperation):
    """Any per-image transform (a torchvision v2 transform, say) run on each image of the batch
    on its own, so that each gets its own random draw; on the pixels unless ``runs_on`` says
    ``normalised``. A Python loop over the batch: ``make bench`` gives its cost per batch."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], runs_on: str = PIXELS):
        if runs_on not in (PIXELS, NORMALISED):
            raise ConfigError(f"runs_on={runs_on!r} is not one of {[PIXELS, NORMALISED]}")
        self.transform = transform
        self.runs_on = runs_on

    def __call__(self, images: torch.Tensor, transform: BatchTransform) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])


def ordered(augment: Mapping[str, Any] | None) -> list[tuple[str, Mapping[str, Any]]]:
    """The entries of ``data.augment`` that are not null, by their ``order``: their position
    unless they give one (a stable sort, so equal orders keep the mapping's)."""
    entries = [(name, node) for name, node in (augment or {}).items() if node is not None]
    positions = {name: node.get(ORDER, i) for i, (name, node) in enumerate(entries)}
    return sorted(entries, key=lambda entry: positions[entry[0]])


def build_operations(augment: Mapping[str, Any] | None) -> list[BatchOperation]:
    """The operations of ``data.augment`` by their order, null entries left out; a callable that
    is not a ``BatchOperation`` (a torchvision transform) runs per image. A mistake is named by
    its key."""
    operations = []
    for name, node in ordered(augment):
        try:
            built = instantiate({k: v for k, v in node.items() if k != ORDER})
        except Exception as err:  # noqa: BLE001 - Hydra wraps import and argument errors alike
            cause = err.__cause__ or err
            if isinstance(cause, ConfigError):  # the operation's own check of an argument
                raise ConfigError(f"data.augment.{name}: {cause}") from None
            raise ConfigError(
                f"data.augment.{name}={dict(node)} cannot be built ({cause}). Name a "
                "BatchOperation or a torchvision transform, with its arguments: "
                "docs/data.md#training-augmentations"
            ) from None
        if isinstance(built, BatchOperation):
            operations.append(built)
        elif callable(built):
            operations.append(PerImage(built))
        else:
            raise ConfigError(
                f"data.augment.{name} builds a {type(built).__name__}, which cannot transform "
                "images; give it a BatchOperation or a torchvision transform"
            )
    return operations


def check_augment(augment: Any) -> None:
    """The shape of ``data.augment``, before any operation is built: a mapping of name ->
    ``{_target_: ...}`` or null."""
    if isinstance(augment, bool):
        raise ConfigError(
            f"data.augment={augment}: data.augment is the mapping of training operations now "
            "(CHANGELOG.md). Leave it out for the data set's own, or train without any: "
            "data.augment=null"
        )
    if augment is None:
        return
    if not isinstance(augment, Mapping):
        raise ConfigError(f"data.augment={augment!r} must be a mapping of operations, or null")
    for name, node in augment.items():
        if node is not None and not (isinstance(node, Mapping) and "_target_" in node):
            raise ConfigError(
                f"data.augment.{name}={node!r} must be an operation, {{_target_: CLASS, ...}}, "
                "or null (docs/data.md#training-augmentations)"
            )
        order = (node or {}).get(ORDER, 0)
        if (
            isinstance(order, bool)
            or not isinstance(order, int | float)
            or not math.isfinite(order)
        ):
            raise ConfigError(f"data.augment.{name}.order={order!r} must be a number")
