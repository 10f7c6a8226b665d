"""data=csv: a label file's rows as a data set, with or without a split column, its mistakes named
by line, its rows fingerprinted into checkpoints, and src.predict on it."""

import csv
import shutil
from pathlib import Path

import pytest

from src.checkpoints import datamodule_state, read_checkpoint
from src.data.csvfile import CSVDataModule, LabelFileChangedError, LabelFileError
from src.data.datamodule import BadImagesError
from src.eval import evaluate
from src.predict import predict
from src.train import train
from tests.conftest import compose_config, quick_overrides, with_tiny_net

# the tiny tree's classes, renamed: a name with a space and a comma, as a spreadsheet has them
NAMES = {"6.5": "coarse, 6.5", "13.0": "fine 13"}


def write_labels(root: Path, folder: Path, split_column: bool = True, extra: list | None = None):
    """``folder/labels.csv`` over copies of the tiny tree's images in ``folder/images``, the
    label of each its class (two renamed), its split the tree's where ``split_column``."""
    rows = []
    for image in sorted(root.glob("*/*/*.jpg")):
        split, name = image.parts[-3], image.parts[-2]
        copy = folder / "images" / f"{split}-{name}-{image.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, copy)
        rows.append([copy.relative_to(folder).as_posix(), NAMES.get(name, name), split])
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"] if split_column else ["path", "label"])
        for row in rows + (extra or []):
            writer.writerow(row if split_column else row[:2])
    return path


def csv_overrides(labels: Path, log_dir: Path) -> list[str]:
    return with_tiny_net([
        "data=csv", f"data.csv={labels}", "data.resize_size=72", "data.crop_size=64",
        f"data.cache_dir={labels.parent / 'cache'}", *quick_overrides(log_dir),
    ])  # fmt: skip


@pytest.mark.parametrize("split_column", [True, False])
def test_a_label_file_trains_evaluates_and_predicts(tiny_root, tmp_path, split_column):
    labels = write_labels(tiny_root, tmp_path / "set", split_column)
    before = sorted(p.relative_to(labels.parent) for p in labels.parent.rglob("*"))
    cfg = compose_config("train", csv_overrides(labels, tmp_path / "logs"), tmp_path / "run")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(ckpt)
    assert checkpoint["hyper_parameters"]["class_names"][:2] == ["10.0", "10.5"]
    assert {"coarse, 6.5", "fine 13"} <= set(checkpoint["hyper_parameters"]["class_names"])
    state = datamodule_state(checkpoint)
    assert len(state["rows_fingerprint"]) == 16 and ("split" in state) != split_column
    if not split_column:
        counts = {s: len(state["split"][s]) for s in ("train", "val", "test")}
        assert counts == {"train": 28, "val": 14, "test": 14}  # 1 of 4 per class each
    # nothing written beside the file or its images
    after = sorted(p.relative_to(labels.parent) for p in labels.parent.rglob("*"))
    assert [p for p in after if "cache" not in p.parts] == [
        p for p in before if "cache" not in p.parts
    ]
    metrics = evaluate(compose_config("eval", [f"ckpt_path={ckpt}"], tmp_path / "eval"))
    assert 0 <= metrics["test/acc"] <= 1
    rows = predict(compose_config("predict", [f"ckpt_path={ckpt}", f"image={labels}"],
                                  tmp_path / "predict"))  # fmt: skip
    assert len(rows) == 56 and all(row["true_class"] for row in rows)
    assert (tmp_path / "predict" / "confusion_matrix.png").is_file()


def test_changed_rows_stop_evaluation_and_a_moved_file_is_found(tiny_root, tmp_path):
    labels = write_labels(tiny_root, tmp_path / "set")
    cfg = compose_config("train", csv_overrides(labels, tmp_path / "logs"), tmp_path / "run")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    moved = tmp_path / "moved"
    shutil.copytree(labels.parent, moved)
    args = [f"ckpt_path={ckpt}", f"data.csv={moved / 'labels.csv'}"]
    assert "test/acc" in evaluate(compose_config("eval", args, tmp_path / "eval"))
    text = (moved / "labels.csv").read_text().splitlines()
    (moved / "labels.csv").write_text("\n".join([text[0], *text[2:]]) + "\n")  # a row less
    with pytest.raises(LabelFileChangedError, match="rows .* have changed"):
        evaluate(compose_config("eval", args, tmp_path / "eval2"))


def test_every_kind_of_bad_row_is_named_by_line(tiny_root, tmp_path):
    good = write_labels(tiny_root, tmp_path / "set")
    first = good.read_text().splitlines()[1].split(",")
    extra = [
        [first[0], first[1], "train"],  # line 58: the path of line 2 again
        ["images/missing.jpg", first[1], "train"],  # line 59
        ["images/other.jpg", "unseen", "val"],  # line 60: a stranger, and missing
        ["", "", "train"],  # line 61
        [first[0], first[1], "holdout"],  # line 62
    ]
    labels = write_labels(tiny_root, tmp_path / "bad", extra=extra)
    with pytest.raises(LabelFileError) as err:
        CSVDataModule(csv=str(labels), num_workers=0).split_images()
    message = str(err.value)
    assert "paths named more than once (lines 2, 58, 62)" in message
    assert "files that do not exist (lines 59, 60)" in message
    assert "no training row has (line 60)" in message and "empty path or label (line 61)" in message
    assert "other than train, val or test (line 62)" in message and "\n" not in message
    mixed = good.parent / "mixed.csv"
    mixed.write_text(good.read_text().replace(",train\n", ",\n", 3))
    with pytest.raises(LabelFileError, match=r"rows with one \(lines 16, 17, 18\): give") as err:
        CSVDataModule(csv=str(mixed), num_workers=0).split_images()
    assert "do not exist" not in str(err.value)
    headless = tmp_path / "headless.csv"
    headless.write_text("file,class\na.jpg,x\n")
    with pytest.raises(LabelFileError, match=r"has the columns \['file', 'class'\]"):
        CSVDataModule(csv=str(headless)).split_images()


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_unreadable_images_of_a_label_file_are_listed_or_skipped(tiny_root, tmp_path, backend):
    labels = write_labels(tiny_root, tmp_path / "set")
    broken = labels.parent / "images" / "broken.jpg"
    broken.write_bytes(b"not a picture")
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerow(["images/broken.jpg", "8.0", "train"])
    options = {"resize_size": 72, "crop_size": 64, "num_workers": 0, "backend": backend,
               "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    with pytest.raises(BadImagesError, match=f"1 of 57 files .*\n  {broken}: "):
        CSVDataModule(csv=str(labels), **options).prepare_data()
    dm = CSVDataModule(csv=str(labels), skip_bad_images=True, **options)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 28
