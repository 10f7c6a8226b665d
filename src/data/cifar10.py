"""CIFAR-10 in its python-pickle format: the data set of the paper's Figure 1."""

import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, VisionDataset

from src.data.datamodule import ImageDataModule
from src.data.images import square
from src.data.statistics import CHUNK, pixel_statistics
from src.utils import ConfigError, MissingFileError

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays, and refuses every other global: a
    CIFAR-10 file from elsewhere cannot run code (``pickle.load`` would run whatever it names)."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise ConfigError(
                f"A CIFAR-10 file asks to load {module}.{name}, which a data file never needs; "
                "refusing it. Use the python version of CIFAR-10 from its official page."
            )
        return super().find_class(module, name)


def load_batch(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return _ArraysOnly(f, encoding="latin1").load()


class CIFAR10Files(CIFAR10):
    """torchvision's CIFAR-10 dataset, read with an unpickler that only builds arrays, and
    checking that the files exist instead of their checksums, so any copy in the same format
    (a subset, a re-packed archive, a test's tiny batches) loads. Its images are delivered as
    the uint8 (3, S, S) squares every data module delivers, resized only where S is not 32."""

    def __init__(self, root: str, train: bool = True, resize_size: int = 32) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        self.resize_size = resize_size
        folder = Path(root, self.base_folder)
        batches = [
            load_batch(folder / name) for name, _ in (self.train_list if train else self.test_list)
        ]
        self.data = (
            np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
        self.targets = [label for b in batches for label in b["labels"]]
        self.classes = load_batch(folder / self.meta["filename"])[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = self.data[i]
        if self.resize_size != pixels.shape[0]:
            return torch.from_numpy(
                square(Image.fromarray(pixels), self.resize_size)
            ), self.targets[i]
        return torch.from_numpy(pixels).permute(2, 0, 1), self.targets[i]

    def squares(self, chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """Every image as the uint8 (n, 3, S, S) squares ``__getitem__`` delivers, ``chunk`` at a
        time: sliced from the arrays at 32 px, resized one by one otherwise."""
        for start in range(0, len(self.data), chunk):
            rows = range(start, min(start + chunk, len(self.data)))
            if self.resize_size == self.data.shape[1]:
                yield self.data[rows.start : rows.stop].transpose(0, 3, 1, 2)
            else:
                yield np.stack([self[i][0].numpy() for i in rows])


def missing_files(root: str | Path) -> list[Path]:
    folder = Path(root, CIFAR10.base_folder)
    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return [folder / n for n in names if not (folder / n).is_file()]


class CIFAR10DataModule(ImageDataModule):
    """50,000 training images; CIFAR-10 has no validation split, so validation and test both use
    the 10,000 test images, the set the paper reports on.

    Images stay 32 px unless ``resize_size``/``crop_size`` say otherwise; ``batch_size`` is the
    global batch, split over devices as for every data set. The arrays are in memory already: it
    gives Datasets of uint8 squares (``make_datasets``) instead of files.
    """

    may_change = (*ImageDataModule.may_change, "root")

    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = False,
        resize_size: int = 32,
        crop_size: int = 32,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("backend", "pil") != "pil":
            raise ConfigError(
                f"data.backend={kwargs['backend']!r}: the cache holds decoded image folders, and "
                "CIFAR-10's images are already decoded arrays in memory; use data.backend=pil"
            )
        super().__init__(resize_size=resize_size, crop_size=crop_size, mean=mean, std=std, **kwargs)
        self.save_hyperparameters(logger=False)
        self.source = self.root = Path(root)
        self._files: dict[bool, CIFAR10Files] = {}

    @property
    def classes(self) -> list[str]:
        return list(CLASSES)

    def prepare_data(self) -> None:
        if missing_files(self.root) and self.hparams.download:
            CIFAR10(str(self.root), download=True)
        self._require_files()

    def _require_files(self) -> None:
        missing = missing_files(self.root)
        if not missing:
            return
        folder = self.root / CIFAR10.base_folder
        raise MissingFileError(
            f"CIFAR-10 is not in '{folder}': missing {', '.join(p.name for p in missing)}. "
            "Place the python version's files there (data_batch_1 ... data_batch_5, test_batch, "
            "batches.meta: cifar-10-python.tar.gz from the CIFAR-10 page, extracted into "
            f"'{self.root}'), or run with data.download=true where the network allows."
        )

    def files(self, train: bool) -> CIFAR10Files:
        """The training or test batches, read once per data module."""
        if train not in self._files:
            self._require_files()
            size = self.hparams.resize_size
            self._files[train] = CIFAR10Files(str(self.root), train=train, resize_size=size)
        return self._files[train]

    def ensure_statistics(self) -> None:
        """The mean image (``data.input_scale=mean_image``) and RGB covariance (``pca_noise``) of
        all training images, as the paper's code subtracted the whole training set's mean: not a
        sample, as for image folders, since the arrays are in memory already (1.4 s for 50,000
        images of 32 px on a 2-core CPU, so measured anew by each run rather than cached).
        Skipped where no setting needs them or a checkpoint supplied them."""
        if self.statistics is not None or not self.needs_statistics:
            return
        train = self.files(train=True)
        stats = pixel_statistics(train.squares())
        self.statistics = {k: torch.from_numpy(v) for k, v in stats.items()}
        log.info("Pixel statistics of the %d CIFAR-10 training images", len(train))

    def make_datasets(self) -> dict[str, Dataset]:
        test = self.files(train=False)
        return {"train": self.files(train=True), "val": test, "test": test}
