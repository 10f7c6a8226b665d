"""Classify images with a trained checkpoint: ``python -m src.predict ckpt_path=PATH image=PATH``.

``image=`` is one file, a folder (every image under it, at any depth) or a label file
(``labels.csv``: its ``path`` column, relative to its folder, and its ``label`` column where it
has one, as ``data=csv`` reads it). The images go through
the network in batches, read by the loader and the evaluation transform ``src.eval`` uses, both
built from the checkpoint, so no data set is needed. ``ten_crop=true`` averages the softmax over
the ten crops of each image (paper, section 4.1) instead of taking the centre crop.

Writes into the output folder:

- ``predictions.csv``, one row per image: its path relative to ``image=``, the top-1 class and
  probability, the ``top_k`` classes and probabilities, the true class where ``image=`` is a tree
  of class folders named as the checkpoint's classes (or a label file naming them), and the
  error of a file that could not be
  read (the file is skipped, the others are still classified); ``predictions.json`` holds the
  same rows. Rows are written as the batches come, so a folder of any size fits in memory.
- where the true classes are known, ``confusion_matrix.png``, and the accuracy in the log;
- with ``figures=true`` (the default for a single file), one titled PNG per image, named after
  its path relative to ``image=`` so that no two collide.

torch loads when the task runs, not at the top, so the command line answers before it does.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from src.utils import ConfigError, MissingFileError, exit_on_user_error
from src.utils.io import write_figure
from src.utils.overrides import refuse_data_keys, refuse_renamed

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

log = logging.getLogger(__name__)
# the data keys a prediction may set: how its images load; the rest is the checkpoint's
DATA_KEYS = ("batch_size", "num_workers")


class Inputs:
    """What ``image=`` names: its files, each with its path relative to ``base``, and the true
    labels (indices into the checkpoint's classes) when every file lies under a folder named
    after one of them, or a label file gives one of them for every row, else ``None``."""

    def __init__(self, path: str | Path, class_names: list[str]) -> None:
        from src.data.csvfile import read_rows
        from src.data.images import image_files, relative_to

        path = Path(path)
        index = {name: i for i, name in enumerate(class_names)}
        self.labels: list[int] | None = None
        if path.is_file() and path.suffix.lower() == ".csv":
            rows = read_rows(path, required=("path",))
            self.base, self.single = path.parent, False
            self.files = [path.parent / row["path"] for row in rows]
            given = [row["label"] for row in rows]
            if all(label in index for label in given):
                self.labels = [index[label] for label in given]
            elif any(given):
                log.warning("%s: labels that are not the checkpoint's classes; no accuracy", path)
        elif path.is_file():
            self.base, self.files, self.single = path.parent, [path], True
        elif path.is_dir():
            self.base, self.files, self.single = path, image_files(path), False
            if not self.files:
                raise MissingFileError(f"image={path}: the folder holds no images")
        else:
            raise MissingFileError(f"image={path}: no such file or folder")
        self.relative = [Path(relative_to(p, self.base)) for p in self.files]
        if path.is_dir():
            tops = [r.parts[0] if len(r.parts) > 1 else None for r in self.relative]
            if all(top in index for top in tops):
                self.labels = [index[top] for top in tops]

    def figure_names(self) -> list[Path]:
        """``<relative path without suffix>_prediction.png``; the suffix is kept where two files
        differ only by it (``a.jpg``, ``a.png``)."""
        stems = [r.with_suffix("") for r in self.relative]
        seen: dict[Path, int] = {}
        for stem in stems:
            seen[stem] = seen.get(stem, 0) + 1
        return [
            Path(f"{stem if seen[stem] == 1 else rel}_prediction.png")
            for stem, rel in zip(stems, self.relative, strict=True)
        ]


class Squares:
    """Each file as the uint8 (3, S, S) square the evaluation loader delivers, or the reason it
    could not be read: a broken file does not stop the others. A map-style dataset, which is
    all a DataLoader asks for."""

    def __init__(self, files: list[Path], resize_size: int) -> None:
        self.files = files
        self.resize_size = resize_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        from src.data.images import load_square

        try:
            return i, load_square(self.files[i], self.resize_size), None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a verdict on the file
            return i, None, f"{type(err).__name__}: {err}"


def collate(items: list[tuple[int, np.ndarray | None, str | None]]) -> dict[str, Any]:
    """A batch of the readable squares, with every item's index and error."""
    import torch

    squares = [square for _, square, _ in items if square is not None]
    return {
        "index": [i for i, _, _ in items],
        "errors": [error for _, _, error in items],
        "squares": torch.from_numpy(np.stack(squares)) if squares else None,
    }


class StreamedFile:
    """A text file written piece by piece into a temporary file beside it and renamed into
    place when complete, so a killed run never leaves a truncated table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.file: io.TextIOWrapper = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def columns(k: int, labelled: bool) -> list[str]:
    """The CSV's header (the JSON rows' keys)."""
    ranked = [f"{name}_{r}" for r in range(1, k + 1) for name in ("class", "probability")]
    return ["path", "class", "probability", *ranked, *(["true_class"] if labelled else []), "error"]


DEVICES = ("auto", "cpu", "cuda")


def check_config(cfg: DictConfig) -> None:
    """The keys of predict.yaml, named before any work."""
    if cfg.device not in DEVICES:
        raise ConfigError(f"device={cfg.device!r} is not one of {list(DEVICES)}")
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA GPU is available here; use device=auto or cpu")
    for key in ("ten_crop", "figures"):
        value = cfg.get(key)
        if not isinstance(value, bool) and not (key == "figures" and value is None):
            raise ConfigError(f"{key}={value!r} must be true or false")
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise ConfigError(f"top_k={cfg.top_k!r} must be a whole number of at least 1")
    for key, low in (("batch_size", 1), ("num_workers", 0)):
        value = cfg.data.get(key)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (whole and value >= low):
            raise ConfigError(f"data.{key}={value!r} must be a whole number of at least {low}")


def table_row(
    header: list[str],
    path: Path,
    probs: torch.Tensor | None,
    error: str | None,
    names: list[str],
    k: int,
) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    """One image's row (its classes and probabilities, or its error) and its top-k pairs."""
    row: dict[str, Any] = dict.fromkeys(header)
    row["path"], row["error"] = path.as_posix(), error
    if probs is None:
        return row, []
    best = probs.topk(k)
    top = [(names[c], float(q)) for q, c in zip(*best, strict=True)]
    row["class"], row["probability"] = top[0]
    for rank, (name, q) in enumerate(top, 1):
        row[f"class_{rank}"], row[f"probability_{rank}"] = name, q
    return row, top


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=True,
    )  # fmt: skip


def batches_of_probabilities(
    model: torch.nn.Module,
    loader: DataLoader,
    transform: Any,
    ten_crop: bool,
    device: torch.device,
) -> Iterator[tuple[list[int], list[str | None], list[torch.Tensor | None]]]:
    """Per batch: the items' indices, errors and softmax rows (None where unreadable); the
    batch transform runs where the model does, as in src.eval."""
    import torch

    n = len(model.class_names)
    for batch in loader:
        probs: list[torch.Tensor | None] = [None] * len(batch["index"])
        if batch["squares"] is not None:
            # not across the yield: the caller's code runs outside inference mode
            with torch.inference_mode():
                squares = batch["squares"].to(device, non_blocking=True)
                x = transform(squares, "predict", ten_crop=ten_crop)
                # (B, crops, C, H, W): one crop, or ten whose softmax is averaged
                x = x.unsqueeze(1) if x.ndim == 4 else x
                p = model(x.flatten(0, 1)).view(len(x), -1, n).float().softmax(-1).mean(1)
                rows = iter(p.cpu())
            probs = [next(rows) if error is None else None for error in batch["errors"]]
        yield batch["index"], batch["errors"], probs


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Classify ``cfg.image`` (a file or a folder); returns one dict per image: the CSV row, plus
    ``image`` (its path), ``top`` ((class, probability) pairs) and ``figure`` (its PNG or None).
    """
    check_config(cfg)
    import torch
    from torch.utils.data import DataLoader

    from src.checkpoints import evaluation_transform, load_classifier
    from src.data.images import load_rgb
    from src.experiments.figures import confusion_matrix_figure, prediction_figure

    start = time.perf_counter()
    model, checkpoint = load_classifier(cfg.ckpt_path)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    model.to(device)
    transform = evaluation_transform(checkpoint)
    data = checkpoint["datamodule_hyper_parameters"]
    names = model.class_names
    inputs = Inputs(cfg.image, names)
    figures = inputs.single if cfg.figures is None else cfg.figures
    figure_names = inputs.figure_names() if figures else None
    k = min(cfg.top_k, len(names))
    workers = data["num_workers"] if cfg.data.num_workers is None else cfg.data.num_workers
    loader = DataLoader(
        Squares(inputs.files, data["resize_size"]),
        batch_size=cfg.data.batch_size or data["batch_size"],
        num_workers=min(workers, len(inputs.files)),
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    method = "softmax averaged over 10 crops" if cfg.ten_crop else "centre crop"
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = columns(k, inputs.labels is not None)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    results: list[dict[str, Any]] = []
    unreadable: list[str] = []
    table, listing = StreamedFile(out / "predictions.csv"), StreamedFile(out / "predictions.json")
    try:
        writer = csv.DictWriter(table.file, header)
        writer.writeheader()
        with progress_bar(not inputs.single) as bar:
            task = bar.add_task("predict", total=len(inputs.files))
            for indices, errors, probs in batches_of_probabilities(
                model, loader, transform, cfg.ten_crop, device
            ):
                for i, error, p in zip(indices, errors, probs, strict=True):
                    row, top = table_row(header, inputs.relative[i], p, error, names, k)
                    if inputs.labels is not None:
                        row["true_class"] = names[inputs.labels[i]]
                        if top:
                            confusion[inputs.labels[i], names.index(top[0][0])] += 1
                    if error is not None:
                        unreadable.append(f"  {inputs.files[i]}: {error}")
                    writer.writerow(row)
                    listing.file.write(("," if results else "[") + "\n  " + json.dumps(row))
                    figure = None
                    if figure_names is not None and top:
                        figure = out / figure_names[i]
                        title = f"class: {top[0][0]}   prob: {top[0][1]:.3f}"
                        write_figure(
                            prediction_figure(load_rgb(inputs.files[i]), title), figure,
                            bbox_inches="tight", dpi=100,
                        )  # fmt: skip
                    if inputs.single and top:
                        lines = [f"  {r}. {name:<12} {q:.4f}" for r, (name, q) in enumerate(top, 1)]
                        log.info("%s (%s)\n%s", inputs.files[i], method, "\n".join(lines))
                    results.append(
                        row | {"image": str(inputs.files[i]), "top": top,
                               "figure": str(figure) if figure else None,
                               "ten_crop": cfg.ten_crop}
                    )  # fmt: skip
                bar.advance(task, len(indices))
        listing.file.write("\n]\n")
        table.commit()
        listing.commit()
    except BaseException:
        table.discard()
        listing.discard()
        raise
    seconds = time.perf_counter() - start
    done = len(inputs.files) - len(unreadable)
    log.info(
        "%d images classified (%s) in %.1f s, %.1f images/s; predictions.csv and "
        "predictions.json in %s", done, method, seconds, done / seconds, out,
    )  # fmt: skip
    if unreadable:
        log.warning(
            "%d file(s) could not be read and were skipped (listed in predictions.csv):\n%s",
            len(unreadable), "\n".join(unreadable),
        )  # fmt: skip
    if inputs.labels is not None and done:
        correct = int(confusion.diag().sum())
        log.info("accuracy %.4f (%d of %d, %s)", correct / done, correct, done, method)
        title = f"{inputs.base} ({method})"
        write_figure(confusion_matrix_figure(confusion, names, title), out / "confusion_matrix.png")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    refuse_renamed()
    refuse_data_keys(allowed=DATA_KEYS)
    main()
