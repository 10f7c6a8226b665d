"""DataModules: any ImageFolder tree, and the built-in synthetic micrographs."""

import json
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from src.data.cache import CachedImages, as_batch, cache_folder, ensure_cache
from src.data.gpu_augment import centre_crop, normalise, random_crops, ten_crops
from src.data.images import load_rgb
from src.data.micrographs import CLASSES, ensure_micrographs
from src.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_SCALES,
    eval_transform,
    train_transform,
)

# pil: decode, resize and augment every image in the loader's workers (torchvision transforms);
# cache: decode once into a memory-mapped cache, augment whole batches on the model's device.
BACKENDS = ("pil", "cache")


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_image_folder(root: str | Path) -> list[str]:
    """Validate ``root/{train,val[,test]}/<class>/<images>`` and return the class names, with an
    error that says what to change for each way a tree can be wrong."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root '{root}' does not exist. Point data.root at a folder holding train/ and "
            "val/ sub-folders with one folder of images per class, or use the built-in data set "
            "with data=micrographs."
        )
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    missing = {"train", "val"} - set(splits)
    if missing:
        raise FileNotFoundError(
            f"Data root '{root}' has no {' or '.join(sorted(missing))}/ folder: it needs train/ "
            "and val/ (and optionally test/), each with one folder of images per class."
        )
    classes = class_folders(root / "train")
    if not classes:
        raise FileNotFoundError(f"'{root / 'train'}' has no class folders.")
    for split in splits[1:]:
        other = class_folders(root / split)
        if other != classes:
            only_train = sorted(set(classes) - set(other))
            only_other = sorted(set(other) - set(classes))
            raise ValueError(
                f"Class folders differ between '{root / 'train'}' and '{root / split}': "
                f"only in train: {only_train}; only in {split}: {only_other}. "
                "Every split needs the same class folders."
            )
    for split in splits:
        for name in classes:
            folder = root / split / name
            if not any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.iterdir()):
                raise FileNotFoundError(
                    f"Class folder '{folder}' has no images ({', '.join(IMG_EXTENSIONS)}). "
                    "Add images or remove the folder from every split."
                )
    return classes


def write_class_indices(classes: list[str], path: str | Path) -> Path:
    """``{"0": "10.0", ...}``: label index to class name, the file prediction scripts expect."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(enumerate(classes)), indent=2))
    return path


class ImageFolderDataModule(LightningDataModule):
    """Train/val/test loaders over ``root/{train,val,test}``; test falls back to val.

    ``batch_size`` is the global batch: each of the trainer's devices gets an equal share, as the
    paper's batch of 128 was split over its two GPUs.

    ``backend="cache"`` decodes every split once into ``cache_dir`` (see src/data/cache.py) and
    crops, flips and normalises whole batches in ``on_after_batch_transfer``, on the device the
    model runs on; ``"pil"`` does all of it per image in the loader's workers.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        resize_size: int = 256,
        crop_size: int = 224,
        augment: bool = True,
        ten_crop: bool = False,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        input_scale: str = "standardised",
        backend: str = "pil",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if input_scale not in INPUT_SCALES:
            raise ValueError(f"data.input_scale={input_scale!r} is not one of {list(INPUT_SCALES)}")
        if backend not in BACKENDS:
            raise ValueError(f"data.backend={backend!r} is not one of {list(BACKENDS)}")
        if backend == "cache" and not cache_dir:
            raise ValueError(
                "data.backend=cache needs data.cache_dir: a folder outside the data root for the "
                "decoded images (or data.backend=pil)"
            )
        if crop_size > resize_size:
            raise ValueError(
                f"data.crop_size={crop_size} is larger than data.resize_size={resize_size}"
            )
        self.root = Path(root)
        self.datasets: dict[str, Dataset] = {}

    @property
    def classes(self) -> list[str]:
        return check_image_folder(self.root)

    def prepare_data(self) -> None:
        check_image_folder(self.root)
        self.prepare_cache()

    def split_folders(self) -> dict[str, str]:
        """The folder each stage reads: test falls back to val."""
        test = "test" if (self.root / "test").is_dir() else "val"
        return {"train": "train", "val": "val", "test": test}

    def prepare_cache(self) -> None:
        """Build the decode-once cache of every split folder that lacks one. Lightning runs
        prepare_data in one process per node while the others wait, so one process builds it."""
        if self.hparams.backend != "cache":
            return
        for folder in sorted(set(self.split_folders().values())):
            ensure_cache(self.root / folder, self.hparams.cache_dir, self.hparams.resize_size)

    def make_cached_datasets(self) -> dict[str, Dataset]:
        hp = self.hparams
        datasets = {
            split: CachedImages(cache_folder(self.root / folder, hp.cache_dir, hp.resize_size))
            for split, folder in self.split_folders().items()
        }
        if datasets["train"].classes != self.classes:
            raise ValueError(
                f"Class folders of '{self.root}' {datasets['train'].classes} differ from the "
                f"expected {self.classes}"
            )
        return datasets

    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % world:
            raise ValueError(
                f"data.batch_size={self.hparams.batch_size} is the global batch and must divide "
                f"by the {world} devices (trainer.devices x trainer.num_nodes); choose a multiple "
                f"of {world}."
            )
        return self.hparams.batch_size // world

    def transforms(self) -> dict[str, v2.Compose]:
        hp = self.hparams
        sizes = (hp.resize_size, hp.crop_size, hp.mean, hp.std, hp.input_scale)
        evaluate = eval_transform(*sizes)
        return {
            "train": train_transform(*sizes) if hp.augment else evaluate,
            "val": evaluate,
            "test": eval_transform(*sizes, ten_crop=hp.ten_crop),
        }

    def make_datasets(self, transforms: dict[str, v2.Compose]) -> dict[str, Dataset]:
        check_image_folder(self.root)
        test_split = "test" if (self.root / "test").is_dir() else "val"
        folders = {"train": "train", "val": "val", "test": test_split}
        datasets = {
            split: ImageFolder(
                str(self.root / folder), transform=transforms[split], loader=load_rgb
            )
            for split, folder in folders.items()
        }
        if datasets["train"].classes != self.classes:
            # Labels are folder indices: names in any other order would mislabel predictions.
            raise ValueError(
                f"Class folders of '{self.root}' {datasets['train'].classes} differ from the "
                f"expected {self.classes}"
            )
        return datasets

    def setup(self, stage: str | None = None) -> None:
        self.batch_size_per_device = self.per_device_batch_size()
        if self.hparams.backend == "cache":
            self.datasets = self.make_cached_datasets()
        else:
            self.datasets = self.make_datasets(self.transforms())

    def _loader(self, split: str, **kwargs: Any) -> DataLoader:
        hp = self.hparams
        if hp.backend == "cache":
            kwargs["collate_fn"] = as_batch
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size_per_device,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _eval_loader(self, split: str) -> DataLoader:
        """Each process evaluates its own share of the split and every image exactly once: the
        default distributed sampler pads the shares with repeated images, which biases val/acc.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return self._loader(split)
        sampler = UnrepeatedDistributedSampler(
            self.datasets[split],
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            shuffle=False,
        )
        return self._loader(split, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def device_transform(
        self, images: torch.Tensor, stage: str, channels_last: bool = False
    ) -> torch.Tensor:
        """What the pil path's per-image transforms do, done on a whole uint8 (B, 3, S, S) batch
        of the cache wherever it is: random crops and flips for ``train``, the centre crop (or
        ten crops for ``test`` with ``ten_crop``) otherwise, then normalisation."""
        hp = self.hparams
        if stage == "train" and hp.augment:
            images = random_crops(images, hp.crop_size)
        elif stage == "test" and hp.ten_crop:
            images = ten_crops(images, hp.crop_size)
        else:
            images = centre_crop(images, hp.crop_size)
        return normalise(images, hp.mean, hp.std, hp.input_scale, channels_last=channels_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With the cache backend, the batch is transformed here, on the model's device."""
        if self.hparams.backend != "cache":
            return batch
        images, labels = batch
        trainer = self.trainer
        stage = "train" if trainer.training else "test" if trainer.testing else "val"
        # born in the memory format the model asks for (model.channels_last)
        channels_last = trainer.lightning_module.hparams.get("channels_last", False)
        return self.device_transform(images, stage, channels_last), labels


class MicrographDataModule(ImageFolderDataModule):
    """The built-in data set: synthetic grain micrographs in the 14 grain-size classes, generated
    under ``root`` on first use (by one process only) and reused afterwards."""

    def __init__(
        self,
        root: str = "data/micrographs",
        train_per_class: int = 100,
        val_per_class: int = 20,
        test_per_class: int = 20,
        image_size: int = 128,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.save_hyperparameters(logger=False)

    @property
    def classes(self) -> list[str]:
        # ImageFolder's label order (sorted folder names), known before the tree is generated
        return sorted(CLASSES)

    def prepare_data(self) -> None:
        hp = self.hparams
        ensure_micrographs(
            self.root,
            train_per_class=hp.train_per_class,
            val_per_class=hp.val_per_class,
            test_per_class=hp.test_per_class,
            image_size=hp.image_size,
            seed=hp.seed,
        )
        self.prepare_cache()
