"""A flat folder of class folders split into train, val and test file lists: seeded and
stratified, so every class is in every split, and recorded as paths relative to the folder, so
evaluation and a resumed run read exactly the files the model was trained and validated on."""

import json
import logging
from pathlib import Path

import numpy as np

from src.data.folders import SPLITS, ImageSet
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
    root: Path, files: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Each class's files (relative paths ``<class>/...``) shuffled by ``seed`` and cut by the
    fractions; every split sorted in label order (class names sorted, then paths)."""
    by_class: dict[str, list[str]] = {}
    for path in sorted(files):
        by_class.setdefault(class_of(path), []).append(path)
    need = 2 + (test_fraction > 0)
    small = {name: len(paths) for name, paths in sorted(by_class.items()) if len(paths) < need}
    if small:
        listed = ", ".join(f"'{name}' ({n} image{'s' * (n != 1)})" for name, n in small.items())
        splits = "train, val and test" if need == 3 else "train and val"
        hint = " or set data.test_fraction=0 (then 2 suffice; testing uses val)," * (need == 3)
        raise ConfigError(
            f"Class folders under '{root}' with too few images to put one in each of {splits}: "
            f"{listed}. Each class needs at least {need}. Add images to them,{hint} remove their "
            "folders, or split the folder yourself into train/ and val/ (and test/)."
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
        "data: split the class folders of %s by data.split_seed=%d: %s (file lists in the run "
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


def flat_image_sets(
    root: Path, classes: list[str], split: dict[str, list[str]]
) -> dict[str, ImageSet]:
    """What each stage reads; without test files, testing reads val."""
    label = {name: i for i, name in enumerate(classes)}
    sets = {
        name: ImageSet(
            f"{root.name}-{name}",
            root,
            classes,
            [(str(root / path), label[class_of(path)]) for path in paths],
        )
        for name, paths in split.items()
        if paths
    }
    sets.setdefault("test", sets["val"])
    return sets
