"""Files with classes split into train, val and test file lists by the data module (a flat
folder of class folders, a label file without a split column): seeded and stratified, so every
class is in every split, and recorded as paths relative to the folder or file, so evaluation and
a resumed run read exactly the files the model was trained and validated on."""

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from src.data.datamodule import ImageDataModule
from src.data.images import SPLITS, ImageSet, root_record
from src.utils import ConfigError, UserError
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

# files named in a message before the rest are only counted
SHOWN = 10


class SplitChangedError(UserError):
    """The folder no longer holds the files of the split a model was trained with."""


def class_of(path: str) -> str:
    return path.split("/", 1)[0]


def shares(count: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Images of one class for val and test: the fractions rounded, at least one each where the
    fraction is above 0, and at least one image left for training."""
    test = min(max(round(count * test_fraction), 1), count - 2) if test_fraction > 0 else 0
    val = min(max(round(count * val_fraction), 1), count - 1 - test)
    return val, test


def make_split(
    root: Path,
    class_of_file: Mapping[str, str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[str]]:
    """Each class's files (relative path -> class name) shuffled by ``seed`` and cut by the
    fractions; every split sorted by path."""
    by_class: dict[str, list[str]] = {}
    for path in sorted(class_of_file):
        by_class.setdefault(class_of_file[path], []).append(path)
    need = 2 + (test_fraction > 0)
    small = {name: len(paths) for name, paths in sorted(by_class.items()) if len(paths) < need}
    if small:
        listed = ", ".join(f"'{name}' ({n} image{'s' * (n != 1)})" for name, n in small.items())
        splits = "train, val and test" if need == 3 else "train and val"
        hint = " or set data.test_fraction=0 (then 2 suffice; testing uses val)," * (need == 3)
        raise ConfigError(
            f"Classes of '{root}' with too few images to put one in each of {splits}: "
            f"{listed}. Each class needs at least {need}. Add images to them,{hint} remove them, "
            "or split the data yourself (train/ and val/ folders, or a split column)."
        )
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {name: [] for name in SPLITS}
    for paths in by_class.values():
        shuffled = [paths[i] for i in rng.permutation(len(paths))]
        val, test = shares(len(paths), val_fraction, test_fraction)
        split["val"] += sorted(shuffled[:val])
        split["test"] += sorted(shuffled[val : val + test])
        split["train"] += sorted(shuffled[val + test :])
    return split


def listing(title: str, paths: list[str]) -> str:
    shown = "".join(f"\n    {path}" for path in paths[:SHOWN])
    more = f"\n    ... and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return f"\n  {title} ({len(paths)}):{shown}{more}" if paths else ""


def changes(split: dict[str, list[str]], files: list[str]) -> tuple[list[str], list[str]]:
    """Files under the folder that the split lacks, and files of the split that are gone."""
    recorded = {path for paths in split.values() for path in paths}
    found = set(files)
    return sorted(found - recorded), sorted(recorded - found)


def describe_changes(added: list[str], missing: list[str]) -> str:
    return (
        f"{len(added)} added, {len(missing)} missing:"
        + listing("added", added)
        + listing("missing", missing)
    )


def check_unchanged(root: Path, split: dict[str, list[str]], files: list[str], origin: str) -> None:
    """Stop where the folder's files differ from ``split``, listing what was added and what is
    gone: a model evaluated or resumed on other files would be measured on images it trained on,
    or without some it was validated on."""
    added, missing = changes(split, files)
    if added or missing:
        raise SplitChangedError(
            f"The images under '{root}' differ from the split recorded {origin}: "
            f"{describe_changes(added, missing)}\nRestore the folder as it was, or start a new "
            "training run (without ckpt_path), which splits it anew."
        )


def note_new_split(root: Path, split: dict[str, list[str]], record: Path, seed: int) -> None:
    """Say in the log that this run split the folder, and how its files changed since the last
    split (kept in ``record``): val and test metrics of runs on other files do not compare."""
    counts = ", ".join(f"{len(split[name]):,} {name}" for name in SPLITS)
    log.info(
        "data: split the images of %s by data.split_seed=%d: %s (file lists in the run "
        "folder's split.json and in its checkpoints)",
        root, seed, counts,
    )  # fmt: skip
    try:
        last = json.loads(record.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        last = None
    if last is not None:
        added, missing = changes(last, [path for paths in split.values() for path in paths])
        if added or missing:
            log.warning(
                "data: the images under %s changed since they were last split, so this run's "
                "split is a new one (val and test metrics do not compare with earlier runs'): %s",
                root, describe_changes(added, missing),
            )  # fmt: skip
    atomic_write(record, json.dumps(split))


def image_sets(
    name: str,
    base: Path,
    classes: list[str],
    split: dict[str, list[str]],
    class_of_file: Mapping[str, str],
) -> dict[str, ImageSet]:
    """What each stage reads, the files relative to ``base`` (or absolute); without test
    files, testing reads val."""
    label = {c: i for i, c in enumerate(classes)}
    sets = {
        stage: ImageSet(
            f"{name}-{stage}",
            base,
            classes,
            [(str(base / p), label[class_of_file[p]]) for p in files],
        )
        for stage, files in split.items()
        if files
    }
    sets.setdefault("test", sets["val"])
    return sets


def check_split_settings(val_fraction: float, test_fraction: float, seed: int) -> None:
    fractions = (val_fraction, test_fraction)
    if any(isinstance(f, bool) or not isinstance(f, int | float) for f in fractions) or not (
        val_fraction > 0 and test_fraction >= 0 and sum(fractions) < 1
    ):
        raise ConfigError(
            f"data.val_fraction={val_fraction!r} and data.test_fraction={test_fraction!r} "
            "are the shares of each class held out of training: val above 0, test 0 or more "
            "(0: testing uses val), together below 1"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"data.split_seed={seed!r} must be a whole number")


class SeededSplit:
    """The split a data module makes of its files, and keeps: made by a new run (``data.
    val_fraction`` and ``data.test_fraction`` of each class, shuffled by ``data.split_seed``),
    carried by its checkpoints (``state_dict``), so evaluation and resuming read the very same
    files, and stop where the files have changed since."""

    def __init__(
        self, source: Path, val_fraction: float, test_fraction: float, seed: int, cache_dir: str
    ) -> None:
        check_split_settings(val_fraction, test_fraction, seed)
        self.source, self.seed, self.cache_dir = source, seed, cache_dir
        self.fractions = (val_fraction, test_fraction)
        self.lists: dict[str, list[str]] | None = None
        self.origin = "at the start of this run"

    def of(self, class_of_file: Mapping[str, str]) -> dict[str, list[str]]:
        """The split already made (by a checkpoint's run or earlier in this one), which the
        files must still match, or a new one."""
        if self.lists is not None:
            check_unchanged(self.source, self.lists, list(class_of_file), self.origin)
            return self.lists
        self.lists = make_split(self.source, class_of_file, *self.fractions, self.seed)
        if rank_zero_only.rank == 0:
            record = root_record(self.cache_dir, self.source, "splits")
            note_new_split(self.source, self.lists, record, self.seed)
        return self.lists

    def state_dict(self) -> dict[str, Any]:
        return {"split": self.lists} if self.lists is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "split" in state:
            self.lists = {name: list(paths) for name, paths in state["split"].items()}
            self.origin = "in the checkpoint"

    def record(self) -> dict[str, str]:
        """``split.json`` for the run folder, once the split is made."""
        return {"split.json": json.dumps(self.lists, indent=1)} if self.lists is not None else {}


class SplitDataModule(ImageDataModule):
    """A data set whose files may come without a split, which the module then makes and keeps
    (``split``: ``val_fraction`` and ``test_fraction`` of each class, shuffled by ``split_seed``),
    and writes into the run folder and every checkpoint. A subclass sets ``source``."""

    def __init__(
        self, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        check_split_settings(val_fraction, test_fraction, split_seed)
        self._split: SeededSplit | None = None

    @property
    def split(self) -> SeededSplit:
        if self._split is None:  # once the subclass has set its source
            hp = self.hparams
            self._split = SeededSplit(
                self.source, hp.val_fraction, hp.test_fraction, hp.split_seed, hp.cache_dir
            )
        return self._split

    def run_records(self) -> dict[str, str]:
        return super().run_records() | self.split.record()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | self.split.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.split.load_state_dict(state_dict)
