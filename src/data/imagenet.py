"""ImageNet (ILSVRC2012) from its three official archives, decoded once into the project's cache
straight from the tars: the 1.28 million training files are never extracted, and nothing is ever
written next to the archives (their folder is often shared and read-only).

The classes are the devkit's 1,000 leaf synsets, labelled by their sorted wnids as torchvision's
``ImageFolder`` labels an extracted tree, so a model trained here reads one and vice versa. The
validation labels come from the devkit's ground truth: ILSVRC2012_IDs, mapped to wnids through
``meta.mat`` and then to those labels (the ID itself is not the label).
"""

import hashlib
import io
import json
import logging
import re
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import scipy.io
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.imagenet import ARCHIVE_META
from torchvision.datasets.utils import calculate_md5

from src.data.cache import CACHE_VERSION, INDEX, CachedImages, Chunk, ensure_chunked_cache
from src.data.datamodule import ImageDataModule
from src.data.statistics import cached_statistics
from src.utils import ConfigError, MissingFileError, UserError
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

# split -> archive name, and the official MD5s, as torchvision.datasets.ImageNet knows them
ARCHIVES = {split: name for split, (name, _) in ARCHIVE_META.items()}
OFFICIAL_MD5 = dict(ARCHIVE_META.values())
DEVKIT_DATA = "ILSVRC2012_devkit_t12/data"
GROUND_TRUTH = f"{DEVKIT_DATA}/ILSVRC2012_validation_ground_truth.txt"
# validation images per chunk of the cache (about 197 MB at 256 px): a kill loses at most one
VAL_CHUNK = 1000
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.", re.IGNORECASE)


@dataclass(frozen=True)
class Devkit:
    """What the devkit says: the classes (sorted wnids), their words, and the wnid of each
    validation image (``val_wnids[i]`` is ILSVRC2012_val_{i+1:08d})."""

    wnids: list[str]
    words: dict[str, str]
    val_wnids: list[str]


def _member(tar: tarfile.TarFile, name: str, archive: Path) -> bytes:
    try:
        return tar.extractfile(name).read()
    except KeyError:
        raise ConfigError(
            f"'{archive}' has no {name}: it is not the ILSVRC2012 devkit "
            f"({ARCHIVES['devkit']} from image-net.org)."
        ) from None


def read_devkit(archive: Path) -> Devkit:
    """The devkit's ``meta.mat`` and ground truth, read from the .tar.gz in memory. Not with
    torchvision's ``parse_devkit_archive``: it refuses an archive whose MD5 differs from the
    official one and writes meta.bin next to it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            meta = _member(tar, f"{DEVKIT_DATA}/meta.mat", archive)
            truth = _member(tar, GROUND_TRUTH, archive).decode()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"Cannot read '{archive}' as a .tar.gz: {err}") from None
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    # the 1,000 classes are the leaves; the other synsets are the hierarchy above them
    leaves = synsets[np.array([int(n) == 0 for n in synsets["num_children"]], dtype=bool)]
    wnid_of = {int(i): str(w) for i, w in zip(leaves["ILSVRC2012_ID"], leaves["WNID"], strict=True)}
    words = {str(w): str(t) for w, t in zip(leaves["WNID"], leaves["words"], strict=True)}
    val_wnids = []
    for line, value in enumerate(truth.split(), start=1):
        if not value.isdigit() or int(value) not in wnid_of:
            raise ConfigError(
                f"Line {line} of {GROUND_TRUTH} in '{archive}' is {value!r}, not the "
                "ILSVRC2012_ID of one of meta.mat's classes."
            )
        val_wnids.append(wnid_of[int(value)])
    return Devkit(sorted(words), words, val_wnids)


def verify_archives(paths: list[Path]) -> None:
    """Compare the archives with the official MD5s (``data.verify_archives=true``), naming each
    that differs."""
    differ = []
    for path in paths:
        log.info("Checking the MD5 of %s (%.1f GB)", path, path.stat().st_size / 1e9)
        found = calculate_md5(path)
        if found != OFFICIAL_MD5[path.name]:
            differ.append(f"  {path}: expected {OFFICIAL_MD5[path.name]}, found {found}")
    if differ:
        raise UserError(
            "These archives differ from the official ILSVRC2012 ones (MD5):\n"
            + "\n".join(differ)
            + "\nDownload them again (an interrupted download is the usual cause), or run "
            "without data.verify_archives=true to use them as they are."
        )
    log.info("The archives match the official MD5s: %s", ", ".join(p.name for p in paths))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    try:
        return tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"Cannot read {member.name} from '{archive}': {err}. The archive looks truncated or "
            "damaged; data.verify_archives=true compares it with the official MD5."
        ) from None


def _images(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    return [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(IMG_EXTENSIONS)]


def train_chunks(tar: tarfile.TarFile, archive: Path, labels: dict[str, int]) -> list[Chunk]:
    """One chunk per class: the train archive is a tar of per-class tars ``<wnid>.tar``."""
    members = sorted(
        (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".tar")),
        key=lambda m: m.name,
    )
    wnids = [PurePosixPath(m.name).stem for m in members]
    unknown = [m.name for m, wnid in zip(members, wnids, strict=True) if wnid not in labels]
    if unknown or not members:
        raise ConfigError(
            f"'{archive}' holds {len(members)} class archives, {len(unknown)} of them not named "
            f"after one of the devkit's classes ({unknown[:5]}): it should hold 1,000 tars "
            "<wnid>.tar (n01440764.tar, ...), as ILSVRC2012_img_train.tar does."
        )
    absent = sorted(set(labels) - set(wnids))
    if absent:
        log.warning("%s has no images of %d classes: %s", archive.name, len(absent), absent[:10])

    def items(member: tarfile.TarInfo, label: int) -> list:
        # open while its readers read the chunk; a view of the outer file, nothing to close
        inner = tarfile.open(fileobj=tar.extractfile(member), mode="r:")  # noqa: SIM115
        return [
            (f"{member.name}/{m.name}", label, partial(_read, inner, m, archive))
            for m in _images(inner)
        ]

    return [
        Chunk(wnid, m.size, partial(items, m, labels[wnid]))
        for m, wnid in zip(members, wnids, strict=True)
    ]


def val_chunks(tar: tarfile.TarFile, archive: Path, devkit: Devkit) -> list[Chunk]:
    """``VAL_CHUNK`` images per chunk, labelled by the image number in the name."""
    label_of = {wnid: i for i, wnid in enumerate(devkit.wnids)}
    members, labels = _images(tar), []
    for member in members:
        number = VAL_NAME.search(PurePosixPath(member.name).name)
        if number is None or not 1 <= int(number[1]) <= len(devkit.val_wnids):
            raise ConfigError(
                f"{member.name} in '{archive}' is not one of the "
                f"{len(devkit.val_wnids):,} images ILSVRC2012_val_00000001.JPEG ... of the "
                f"devkit's ground truth."
            )
        labels.append(label_of[devkit.val_wnids[int(number[1]) - 1]])

    def items(start: int, end: int) -> list:
        return [
            (m.name, label, partial(_read, tar, m, archive))
            for m, label in zip(members[start:end], labels[start:end], strict=True)
        ]

    starts = range(0, len(members), VAL_CHUNK)
    return [
        Chunk(
            f"{start:06d}-{min(start + VAL_CHUNK, len(members)):06d}",
            sum(m.size for m in members[start : start + VAL_CHUNK]),
            partial(items, start, start + VAL_CHUNK),
        )
        for start in starts
    ]


class EmptySplit(Dataset):
    """The training split where evaluation runs without its cache: evaluation reads no training
    images, and neither needs the training archive nor waits for a build of it."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int) -> Any:
        raise IndexError(i)


class ImageNetDataModule(ImageDataModule):
    """ImageNet from ``root``'s three official archives: train from ILSVRC2012_img_train.tar,
    val from ILSVRC2012_img_val.tar (test falls back to val), the classes from the devkit.

    Only the cache backend: the images are read from the tars once, in chunks that a rerun after
    a kill skips (``ensure_chunked_cache``), into ``cache_dir``. ``verify_archives`` checks the
    official MD5s first; archives that differ are used as they are without it.
    """

    may_change = (*ImageDataModule.may_change, "root", "verify_archives")

    def __init__(self, root: str, verify_archives: bool = False, **kwargs: Any) -> None:
        if kwargs.setdefault("backend", "cache") != "cache":
            raise ConfigError(
                f"data.backend={kwargs['backend']!r}: data=imagenet reads the archives only "
                "through the decode-once cache (a tar cannot be read at random, image by image, "
                "by the loader's workers); use data.backend=cache, or extract the archives and "
                "use data=imagefolder with data.backend=pil"
            )
        if not isinstance(verify_archives, bool):
            raise ConfigError(f"data.verify_archives={verify_archives!r} must be true or false")
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.source = self.root = Path(root)
        self._devkit: Devkit | None = None

    def archives(self, splits: tuple[str, ...] = ()) -> dict[str, Path]:
        """The devkit's and these splits' archives, which must all be there."""
        paths = {key: self.root / ARCHIVES[key] for key in ("devkit", *splits)}
        missing = [path.name for path in paths.values() if not path.is_file()]
        if missing:
            raise MissingFileError(
                f"data.root='{self.root}' has no {', '.join(missing)}. data=imagenet reads the "
                f"official ILSVRC2012 archives ({', '.join(ARCHIVES.values())}, from "
                "image-net.org, which needs an account) unextracted from that folder. For a copy "
                "already extracted into train/ and val/ with one folder per wnid, use "
                "data=imagefolder data.root=THAT_FOLDER instead."
            )
        return paths

    def devkit(self) -> Devkit:
        if self._devkit is None:
            self._devkit = read_devkit(self.archives()["devkit"])
        return self._devkit

    @property
    def classes(self) -> list[str]:
        return self.devkit().wnids

    @property
    def class_words(self) -> dict[str, str]:
        """wnid -> its words ("tench, Tinca tinca"), in label order."""
        return {wnid: self.devkit().words[wnid] for wnid in self.classes}

    def splits_needed(self) -> tuple[str, ...]:
        trainer = self.trainer
        if trainer is not None and trainer.state.fn != TrainerFn.FITTING:
            return ("val",)
        return ("val", "train")

    def cache_path(self, split: str) -> Path:
        """The split's cache folder, named by the archives' names, sizes and times and the size
        of the squares."""
        hp, paths = self.hparams, self.archives((split,))
        digest = hashlib.sha256(f"imagenet v{CACHE_VERSION} {hp.resize_size}\n".encode())
        for path in (paths[split], paths["devkit"]):
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        name = f"imagenet-{split}-{hp.resize_size}px-{digest.hexdigest()[:16]}"
        return Path(hp.cache_dir) / name

    def built_cache(self, split: str) -> Path | None:
        """The split's finished cache, or None (not built, or its archive is not there)."""
        if not (self.root / ARCHIVES[split]).is_file():
            return None
        folder = self.cache_path(split)
        return folder if (folder / INDEX).is_file() else None

    def ensure_split_cache(self, split: str) -> Path:
        folder = self.cache_path(split)
        if (folder / INDEX).is_file():
            return folder
        archive = self.archives((split,))[split]
        log.info("Decoding %s once into %s", archive, folder)
        try:
            with tarfile.open(archive, "r:") as tar:
                if split == "train":
                    labels = {wnid: i for i, wnid in enumerate(self.classes)}
                    chunks = train_chunks(tar, archive, labels)
                else:
                    chunks = val_chunks(tar, archive, self.devkit())
                info = {"classes": self.classes, "source": str(archive.resolve())}
                return ensure_chunked_cache(folder, chunks, self.hparams.resize_size, info)
        except tarfile.TarError as err:
            raise UserError(f"Cannot read '{archive}' as a tar archive: {err}") from None

    def prepare_data(self) -> None:
        """Build the caches (validation first: minutes, where training's takes hours), after the
        MD5 check where asked; evaluation builds only validation's."""
        paths = self.archives(self.splits_needed())
        if self.hparams.verify_archives:
            verify_archives(list(paths.values()))
        for split in self.splits_needed():
            self.ensure_split_cache(split)
        self.find_bad_images()
        self.ensure_statistics()

    def find_bad_images(self) -> dict[Path, str]:
        """What the builds found undecodable, named by archive and member; stop on them, or
        with ``skip_bad_images`` go on without them (``CachedImages`` leaves them out)."""
        bad, total = {}, 0
        for split in ("train", "val"):
            if (folder := self.built_cache(split)) is None:
                continue
            index = json.loads((folder / INDEX).read_text())
            total += index["count"]
            bad |= {Path(ARCHIVES[split], name): why for name, why in index["unreadable"].items()}
        self.settle_bad_images(bad, total, f"images in the archives under '{self.root}'")
        return bad

    def ensure_statistics(self) -> None:
        """The training statistics, measured from the training cache's rows."""
        if self.statistics is not None or not self.needs_statistics:
            return
        folder = self.ensure_split_cache("train")
        self.statistics = cached_statistics(folder, self.hparams.cache_dir)

    def make_datasets(self) -> dict[str, Dataset]:
        self.find_bad_images()
        val = CachedImages(self.cache_path("val"))
        if "train" in self.splits_needed() or self.built_cache("train") is not None:
            train: Dataset = CachedImages(self.cache_path("train"))
        else:
            train = EmptySplit(self.classes)
        return {"train": train, "val": val, "test": val}

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero:
            # class_indices.json names the classes by wnid, as the model does; here their words
            path = Path(trainer.default_root_dir) / "class_words.json"
            atomic_write(path, json.dumps(self.class_words, indent=1) + "\n")
