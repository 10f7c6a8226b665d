"""The data-module contract: what a data set gives, and everything it gets for it.

A data set is a subclass of ``ImageDataModule`` in a module of its own, and a config. It gives:

- ``classes``: its class names, in label order;
- ``split_images()``: the images of ``train``, ``val`` and ``test`` as ``ImageSet``\\ s (files with
  labels; test may be val's), listed once; or, for images already in memory, ``make_datasets()``
  returning Datasets of uint8 (3, S, S) squares and ``ensure_statistics()`` (CIFAR-10 does);
- ``source``: the folder or file it reads, named in its messages and records;
- ``may_change``: which of its keys may differ when a checkpoint is evaluated or resumed (where
  its files are, how they are loaded), the base's and its own.

It gets, without a line of its own: both backends (``cache``, decoded once into a memory map;
``pil``, decoded in the loader's workers); the check of every file before the first step and
``skip_bad_images``; the training set's statistics (mean image, RGB principal components) where a
setting uses them; loaders with exact mid-epoch resume (``src/data/loader.py``); the one batch
transform and the training operations of ``augment``; checkpointed state (the run's shuffle seed,
the statistics, and a split where the module makes one); DDP (a global batch split over the
devices, every evaluation image seen once).

The hooks, in the order Lightning calls them: ``prepare_data`` (one process per node) runs
``prepare_cache``, ``find_bad_images`` and ``ensure_statistics``, each of which lists the images
with ``split_images``; then ``setup`` (every process) runs ``make_datasets``. A checkpoint's
state is loaded before both when evaluating (``datamodule_from_checkpoint``), after ``setup``
when resuming a fit.
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from src.data.augment import CROPS_AND_FLIPS, BatchOperation, build_operations, check_augment
from src.data.batch_transform import IMAGENET_MEAN, IMAGENET_STD, INPUT_SCALES, BatchTransform
from src.data.cache import CachedImages, cache_folder, ensure_cache
from src.data.images import ImageSet, find_bad_images, load_square, root_record
from src.data.loader import EpochShuffle, make_loader
from src.data.statistics import KEYS, training_statistics
from src.utils import ConfigError, UserError
from src.utils.io import atomic_write
from src.utils.lightning_compat import epochs_done, unrepeated_sampler

log = logging.getLogger(__name__)


# Where the uint8 squares come from: pil decodes and resizes every image in the loader's workers,
# every epoch (no extra disk); cache decodes once into a memory map under cache_dir.
BACKENDS = ("pil", "cache")


class BadImagesError(UserError):
    """Image files that do not decode, listed all at once before training starts."""


def check_data_config(hp: Any) -> None:
    """Values no data set can work with, named by their config key before any work starts."""
    for key in ("batch_size", "resize_size", "crop_size"):
        if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1:
            raise ConfigError(f"data.{key}={hp[key]!r} must be a whole number of at least 1")
    if not isinstance(hp.num_workers, int) or hp.num_workers < 0:
        raise ConfigError(f"data.num_workers={hp.num_workers!r} must be 0 or more")
    if hp.input_scale not in INPUT_SCALES:
        raise ConfigError(f"data.input_scale={hp.input_scale!r} is not one of {list(INPUT_SCALES)}")
    if hp.crop_size > hp.resize_size:
        raise ConfigError(
            f"data.crop_size={hp.crop_size} is larger than data.resize_size={hp.resize_size}: "
            "crops are cut from the resized image; lower data.crop_size or raise data.resize_size"
        )
    if len(hp.mean) != 3 or len(hp.std) != 3 or min(hp.std) <= 0:
        raise ConfigError(
            f"data.mean={list(hp.mean)} and data.std={list(hp.std)} need three values each "
            "(R, G, B), the std above 0"
        )
    check_augment(hp.augment)
    if not isinstance(hp.augment_val, bool):
        raise ConfigError(f"data.augment_val={hp.augment_val!r} must be true or false")
    if hp.backend not in BACKENDS:
        raise ConfigError(f"data.backend={hp.backend!r} is not one of {list(BACKENDS)}")
    if not hp.cache_dir:
        raise ConfigError(
            "data.cache_dir is not set: the file checks (and with data.backend=cache the decoded "
            "images) need a folder outside the data root, e.g. data/cache"
        )


class SquareImages(Dataset):
    """The ``pil`` backend: an ImageSet's files (less those in ``skip``) decoded in the loader's
    workers every epoch into the same uint8 (3, S, S) squares the cache holds."""

    def __init__(self, images: ImageSet, resize_size: int, skip: set[str]) -> None:
        self.classes = images.classes
        self.samples = [(path, label) for path, label in images.samples if path not in skip]
        self.resize_size = resize_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return torch.from_numpy(load_square(path, self.resize_size)), label


class ImageDataModule(LightningDataModule):
    """Train/val/test loaders of uint8 squares, and the one batch transform that turns them into
    the network's input, for any data set that says what its images are (module docstring).

    ``batch_size`` is the global batch: each of the trainer's devices gets an equal share, as the
    paper's batch of 128 was split over its two GPUs.
    """

    # How a checkpoint's data may be loaded elsewhere (a subclass adds where its files are):
    # never what the model sees.
    may_change: ClassVar[tuple[str, ...]] = (
        "batch_size", "num_workers", "pin_memory", "persistent_workers", "ten_crop", "cache_dir",
        "skip_bad_images", "backend",
    )  # fmt: skip
    source: Path

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        resize_size: int = 256,
        crop_size: int = 224,
        augment: Mapping[str, Any] | None = CROPS_AND_FLIPS,
        augment_val: bool = False,
        ten_crop: bool = False,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        input_scale: str = "standardised",
        backend: str = "pil",
        cache_dir: str = "data/cache",
        skip_bad_images: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_data_config(self.hparams)
        self.datasets: dict[str, Dataset] = {}
        # The splits evaluated on ten crops: the test after training with ``ten_crop``; src.eval
        # sets the split it evaluates. Training's own validation stays on the centre crop.
        self.ten_crop_splits: set[str] = {"test"} if ten_crop else set()
        self.bad_images: dict[Path, str] = {}
        # Each epoch's training order comes from this seed (the run's) and the epoch alone
        # (EpochShuffle); checkpoints carry it (state_dict), so a resumed run shuffles as one
        # that never stopped, mid-epoch too, whatever the sanity check or validation draw.
        self.seed = torch.initial_seed()
        # Training-set pixel statistics (src/data/statistics.py), only where a setting needs
        # them; checkpoints carry them (state_dict), so evaluation never measures other data.
        self.statistics: dict[str, torch.Tensor] | None = None
        self.transform: BatchTransform | None = None
        self._operations: list[BatchOperation] | None = None

    @property
    def classes(self) -> list[str]:
        raise NotImplementedError

    def split_images(self) -> dict[str, ImageSet]:
        """The images of ``train``, ``val`` and ``test``, listed once (memoise them)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        # Every file is decoded before the first step: by the cache build where the data are
        # cached (it records what it found), else by the check itself.
        self.prepare_cache()
        self.find_bad_images()
        self.ensure_statistics()

    def verdicts_file(self) -> Path:
        return root_record(self.hparams.cache_dir, self.source, "verified")

    def find_bad_images(self) -> dict[Path, str]:
        """Decode every file of every split before the first step (verdicts cached under
        ``cache_dir``); stop with the full list of broken files, or with ``skip_bad_images``
        drop them and say how many."""
        images = self.split_images().values()
        files = list(dict.fromkeys(Path(path) for split in images for path, _ in split.samples))
        bad = find_bad_images(files, self.verdicts_file())
        self.settle_bad_images(bad, len(files), f"files of '{self.source}'")
        return bad

    def settle_bad_images(self, bad: dict[Path, str], total: int, where: str) -> None:
        """Stop with the full list of unreadable images, or with ``skip_bad_images`` say how
        many are left out (once) and keep them in ``bad_images``."""
        if bad and not self.hparams.skip_bad_images:
            listing = "\n".join(f"  {path}: {problem}" for path, problem in bad.items())
            raise BadImagesError(
                f"{len(bad)} of {total} {where} are not readable images:\n{listing}\nFix or "
                "remove them, or run with data.skip_bad_images=true to train without them."
            )
        if bad and bad != self.bad_images:
            log.warning(
                "Skipping %d unreadable image(s) of %d %s (data.skip_bad_images=true)",
                len(bad), total, where,
            )  # fmt: skip
        self.bad_images = bad

    def prepare_cache(self) -> None:
        """Build the decode-once cache of every split that lacks one. Lightning runs
        prepare_data in one process per node while the others wait, so one process builds it."""
        if self.hparams.backend != "cache":
            return
        hp = self.hparams
        unique = {images.name: images for images in self.split_images().values()}
        for images in unique.values():
            ensure_cache(images, hp.cache_dir, hp.resize_size, self.verdicts_file())

    def operations(self) -> list[BatchOperation]:
        """The training operations of ``augment``, built once (a mistake in one stops the run
        before any work; ``src.train`` asks for them first)."""
        if self._operations is None:
            self._operations = build_operations(self.hparams.augment)
        return self._operations

    def evaluation_transform(self) -> BatchTransform:
        """The batch transform without the training operations: the centre crop (or ten crops)
        and normalisation that ``src.predict`` and ``src.export`` reproduce."""
        hp = self.hparams
        return BatchTransform(
            hp.crop_size, hp.mean, hp.std, hp.input_scale, statistics=self.statistics
        )

    @property
    def uses_operations(self) -> bool:
        """This run applies the training operations: it trains (or runs without a trainer), or
        it evaluates on them (``augment_val``). Evaluating a checkpoint builds none of them."""
        trainer = self.trainer
        fitting = trainer is None or trainer.state.fn == TrainerFn.FITTING
        return fitting or self.hparams.augment_val

    def make_transform(self) -> BatchTransform:
        """The evaluation transform, with the training operations where ``uses_operations``."""
        if not self.uses_operations:
            return self.evaluation_transform()
        hp = self.hparams
        return BatchTransform(
            hp.crop_size, hp.mean, hp.std, hp.input_scale, self.operations(), hp.augment_val,
            self.statistics,
        )  # fmt: skip

    @property
    def needs_statistics(self) -> bool:
        """The mean image and the RGB principal components are measured where the input scale
        or a training operation uses them."""
        if self.hparams.input_scale == "mean_image":
            return True
        return self.uses_operations and any(op.needs_statistics for op in self.operations())

    def ensure_statistics(self) -> None:
        """Measure (or load from ``cache_dir``) the training statistics, unless no setting needs
        them or a checkpoint already supplied them."""
        if self.statistics is not None or not self.needs_statistics:
            return
        unreadable = {str(p) for p in self.find_bad_images()}
        hp = self.hparams
        train = self.split_images()["train"]
        self.statistics = training_statistics(train, hp.cache_dir, hp.resize_size, unreadable)

    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.hparams.batch_size} is the global batch and must divide "
                f"by the {world} devices (trainer.devices x trainer.num_nodes); choose a multiple "
                f"of {world}."
            )
        return self.hparams.batch_size // world

    def make_datasets(self) -> dict[str, Dataset]:
        """uint8 squares of every split, from the cache or decoded by the workers."""
        bad = {str(p) for p in self.find_bad_images()}
        hp = self.hparams
        if hp.backend == "cache":
            return {
                split: CachedImages(cache_folder(images, hp.cache_dir, hp.resize_size))
                for split, images in self.split_images().items()
            }
        return {
            split: SquareImages(images, hp.resize_size, bad)
            for split, images in self.split_images().items()
        }

    def run_records(self) -> dict[str, str]:
        """Files for the run folder (name -> text): the unreadable images left out; a module
        that splits its data adds the split."""
        listing = "".join(f"{path}\t{problem}\n" for path, problem in self.bad_images.items())
        return {"bad_images.txt": listing} if self.bad_images else {}

    def setup(self, stage: str | None = None) -> None:
        self.batch_size_per_device = self.per_device_batch_size()
        self.ensure_statistics()
        if self.transform is None:
            self.transform = self.make_transform()
        self.datasets = self.make_datasets()
        found = self.datasets["train"].classes
        if found != self.classes:
            # Labels are indices: names in any other order would mislabel predictions.
            raise ConfigError(
                f"The classes of '{self.source}' {found} differ from the expected {self.classes}"
            )
        trainer = self.trainer
        if trainer is None or trainer.is_global_zero:
            sizes = ", ".join(f"{len(d):,} {split}" for split, d in self.datasets.items())
            backend = self.hparams.backend
            log.info("data: %s images from %s (backend %s)", sizes, self.source, backend)
        if trainer is not None and trainer.is_global_zero:
            for name, text in self.run_records().items():
                atomic_write(Path(trainer.default_root_dir) / name, text)

    def loader(self, dataset: Dataset, **kwargs: Any) -> StatefulDataLoader:
        """A loader of uint8 batches over one of this module's datasets (or a part of one)."""
        hp = self.hparams
        return make_loader(
            dataset, self.batch_size_per_device, hp.num_workers, hp.pin_memory, **kwargs
        )

    def train_dataloader(self) -> StatefulDataLoader:
        # Fresh workers every epoch: they draw nothing random, and need no state between epochs.
        train = self.datasets["train"]
        # Lightning makes the loader's first iterator before it sets the epoch: a run resumed
        # at an epoch's end starts the next one's order from here.
        trainer = self.trainer
        if trainer is None:
            return self.loader(train, sampler=EpochShuffle(train, self.seed))
        epoch = epochs_done(trainer)
        order = EpochShuffle(train, self.seed, epoch, trainer.world_size, trainer.global_rank)
        return self.loader(train, sampler=order)

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle_seed": self.seed} | (self.statistics or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also before setup (``datamodule_from_checkpoint``)."""
        # checkpoints of format 2 held a generator's state instead: their run's seed is lost
        self.seed = state_dict.get("shuffle_seed", self.seed)
        if all(k in state_dict for k in KEYS):
            self.statistics = {k: state_dict[k] for k in KEYS}
            log.info("Pixel statistics taken from the checkpoint")

    def _eval_loader(self, split: str) -> StatefulDataLoader:
        """Each process evaluates its own share of the split and every image exactly once: the
        default distributed sampler pads the shares with repeated images, which biases val/acc.
        """
        trainer = self.trainer
        # Evaluation has nothing random: no sampler of its own.
        fixed = {
            "persistent_workers": self.hparams.persistent_workers and self.hparams.num_workers > 0
        }
        if trainer is None or trainer.world_size == 1:
            return self.loader(self.datasets[split], **fixed)
        sampler = unrepeated_sampler(self.datasets[split], trainer.world_size, trainer.global_rank)
        return self.loader(self.datasets[split], sampler=sampler, **fixed)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> StatefulDataLoader:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The one batch transform, on the device the model runs on."""
        images, labels = batch
        trainer = self.trainer
        stage = "train" if trainer.training else "test" if trainer.testing else "val"
        # born in the memory format the model asks for (model.channels_last)
        channels_last = trainer.lightning_module.hparams.get("channels_last", False)
        ten_crop = stage in self.ten_crop_splits
        return self.transform(images, stage, ten_crop, channels_last), labels
