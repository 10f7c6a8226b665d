"""Images listed in a label file, ``data=csv data.csv=PATH/labels.csv``: as Kaggle competitions,
lab spreadsheets and medical sets come.

The file is standard CSV (quoted fields may hold commas, quotes and spaces) with a header naming
the columns ``path`` and ``label``, and optionally ``split`` (``train``, ``val`` or ``test``).
Paths are relative to the file's folder, or absolute. The classes are the training labels,
sorted. Without a split column the rows are split as a flat folder is (``SeededSplit``: seeded,
stratified, recorded in checkpoints); without test rows, testing uses val. Checkpoints also keep
a fingerprint of the rows, so evaluating or resuming stops where the file has changed.
"""

import csv
import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from src.data.images import SPLITS, ImageSet, relative_to
from src.data.splits import SplitDataModule, image_sets
from src.utils import MissingFileError, UserError

log = logging.getLogger(__name__)

COLUMNS = ("path", "label")
# rows named in a message before the rest are only counted
SHOWN = 5


class LabelFileError(UserError):
    """Rows of a label file that cannot be used, named by their line numbers."""


class LabelFileChangedError(UserError):
    """The label file no longer holds the rows a model was trained with."""


def listing(lines: list[int]) -> str:
    """``lines 3, 7, 9, 12, 15 and 4 more``: the first ``SHOWN`` and a count."""
    shown = ", ".join(str(n) for n in lines[:SHOWN])
    more = f" and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return f"line{'s' * (len(lines) > 1)} {shown}{more}"


def read_rows(path: Path, required: tuple[str, ...] = COLUMNS) -> list[dict[str, Any]]:
    """The rows of the label file (``path``, ``label``, ``split``, stripped; ``""`` where
    absent) with their ``line`` numbers."""
    if not path.is_file():
        raise MissingFileError(
            f"'{path}': no such file. Give a CSV with the columns path,label (and optionally "
            "split), e.g. data.csv=PATH/labels.csv"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise LabelFileError(
                f"'{path}' has the columns {header}: its header must name "
                f"{' and '.join(required)}, and may name split"
            )
        reader.fieldnames = header
        rows = [
            {"path": (row["path"] or "").strip(), "label": (row.get("label") or "").strip(),
             "split": (row.get("split") or "").strip(), "line": reader.line_num}
            for row in reader
        ]  # fmt: skip
    if not rows:
        raise LabelFileError(f"'{path}' has a header and no rows")
    return rows


def check_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Every problem a label file can have that would make a model learn from the wrong files,
    all named at once."""
    problems = []

    def lines(rows: list[dict[str, Any]]) -> str:
        return listing([r["line"] for r in rows])

    unsplit = [r for r in rows if not r["split"]]
    if unsplit and len(unsplit) < len(rows):
        problems.append(
            f"rows without a split among rows with one ({lines(unsplit)}): give every row train, "
            "val or test, or leave the column empty everywhere to split them here"
        )
    if unknown := [r for r in rows if r["split"] not in ("", *SPLITS)]:
        problems.append(f"a split other than train, val or test ({lines(unknown)})")
    if not unsplit and not any(r["split"] == "val" for r in rows):
        problems.append("no val rows: validation needs some (test may be left out)")
    if empty := [r for r in rows if not r["path"] or not r["label"]]:
        problems.append(f"an empty path or label ({lines(empty)})")
    counts = Counter(r["path"] for r in rows)
    if repeated := [r for r in rows if counts[r["path"]] > 1]:
        problems.append(f"paths named more than once ({lines(repeated)})")
    if gone := [r for r in rows if r["path"] and not (path.parent / r["path"]).is_file()]:
        problems.append(f"files that do not exist ({lines(gone)})")
    train_labels = {r["label"] for r in rows if r["split"] in ("", "train")}
    if strangers := [r for r in rows if r["label"] not in train_labels]:
        problems.append(f"labels in val or test that no training row has ({lines(strangers)})")
    if problems:
        raise LabelFileError(
            f"data.csv={path} has rows that cannot be used: " + "; ".join(problems) + ". Fix "
            "them in the file (line numbers count the header as line 1)."
        )


def fingerprint(rows: list[dict[str, Any]]) -> str:
    """A hash of what the rows say (path, label, split), in the file's order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update("\0".join((row["path"], row["label"], row["split"])).encode() + b"\n")
    return digest.hexdigest()[:16]


class CSVDataModule(SplitDataModule):
    """The images and labels of ``csv`` (module docstring); the split where the file has none:
    ``val_fraction`` and ``test_fraction`` of each class, shuffled by ``split_seed``. Every other
    key is the base's (``src/data/datamodule.py``)."""

    may_change = (*SplitDataModule.may_change, "csv")

    def __init__(self, csv: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.source = Path(csv)
        # the rows' fingerprint: this run's, or the checkpoint's, which the file must still match
        self.rows_fingerprint: str | None = None
        self._image_sets: dict[str, ImageSet] | None = None
        self._classes: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self.split_images()
        return self._classes

    def split_images(self) -> dict[str, ImageSet]:
        """The rows of each split as image sets, read and checked once."""
        if self._image_sets is not None:
            return self._image_sets
        rows = read_rows(self.source)
        check_rows(self.source, rows)
        found = fingerprint(rows)
        if self.rows_fingerprint not in (None, found):
            raise LabelFileChangedError(
                f"data.csv={self.source} is not the file the checkpoint was trained with: its rows "
                "(paths, labels, splits) have changed. Restore it, or start a new training run "
                "(without ckpt_path)."
            )
        self.rows_fingerprint = found
        base = self.source.parent
        files = [relative_to(base / row["path"], base) for row in rows]
        class_of_file = {file: row["label"] for file, row in zip(files, rows, strict=True)}
        if rows[0]["split"]:
            split = {s: [f for f, r in zip(files, rows, strict=True) if r["split"] == s]
                     for s in SPLITS}  # fmt: skip
        else:
            split = self.split.of(class_of_file)
        self._classes = sorted({class_of_file[p] for p in split["train"]})
        self._image_sets = image_sets(self.source.stem, base, self._classes, split, class_of_file)
        return self._image_sets

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"rows_fingerprint": self.rows_fingerprint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.rows_fingerprint = state_dict.get("rows_fingerprint", self.rows_fingerprint)
