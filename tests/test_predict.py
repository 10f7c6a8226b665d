"""src.predict on a folder: batched through the evaluation loader and transform, one CSV (and JSON)
row per image, accuracy and confusion matrix where the classes are known, unreadable files
listed and skipped, and per-image PNGs only on request, each under its own name."""

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from src.checkpoints import datamodule_from_checkpoint, load_classifier
from src.eval import evaluate
from src.predict import predict
from src.utils import ConfigError
from tests.conftest import compose_config


@pytest.fixture
def ckpt(trained) -> Path:
    return trained("cnn4_mean_image")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_predict(ckpt: Path, image: Path, out: Path, *overrides: str) -> list[dict]:
    args = [f"ckpt_path={ckpt}", f"image={image}", *overrides]
    return predict(compose_config("predict", args, out))


def eval_top1(ckpt: Path, ten_crop: bool) -> list[str]:
    """Each test image's top-1 class as src.eval's loader and transform deliver it."""
    model, checkpoint = load_classifier(ckpt)
    datamodule = datamodule_from_checkpoint(checkpoint, {"backend": "pil"})
    datamodule.setup("test")
    classes = []
    with torch.inference_mode():
        for squares, _ in datamodule.test_dataloader():
            x = datamodule.transform(squares, "test", ten_crop)
            if ten_crop:
                b = len(x)
                probs = model(x.flatten(0, 1)).view(b, 10, -1).softmax(-1).mean(1)
            else:
                probs = model(x).softmax(-1)
            classes += [model.class_names[i] for i in probs.argmax(-1)]
    return classes


@pytest.mark.parametrize("ten_crop", [False, True])
def test_folder_rows_are_complete_and_accuracy_is_evals(
    ckpt, tiny_root, tmp_path, ten_crop, caplog
):
    caplog.set_level(logging.INFO, logger="src.predict")
    folder = tiny_root / "test"
    results = run_predict(ckpt, folder, tmp_path / "p", f"ten_crop={ten_crop}", "top_k=3")
    out = tmp_path / "p"
    rows = read_csv(out / "predictions.csv")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert sorted(r["path"] for r in rows) == files and len(set(files)) == len(rows) == 14
    assert list(rows[0]) == [
        "path", "class", "probability", "class_1", "probability_1", "class_2", "probability_2",
        "class_3", "probability_3", "true_class", "error",
    ]  # fmt: skip
    for row in rows:
        assert row["class"] == row["class_1"] and row["true_class"] == row["path"].split("/")[0]
        assert 0 < float(row["probability"]) <= 1 and row["error"] == ""
        assert float(row["probability_1"]) >= float(row["probability_2"])
    # the JSON holds the same rows, the return value adds the file and its ranking
    listed = json.loads((out / "predictions.json").read_text())
    assert [{k: str(v) if v is not None else "" for k, v in r.items()} for r in listed] == rows
    assert [r["class"] for r in results] == [r["class"] for r in rows]
    assert results[0]["image"] == str(folder / rows[0]["path"]) and len(results[0]["top"]) == 3
    # the very predictions of src.eval's loader and transform, and so its accuracy
    assert [r["class"] for r in rows] == eval_top1(ckpt, ten_crop)
    args = [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", "data.backend=pil", "ten_crop=true"]
    metrics = evaluate(compose_config("eval", args, tmp_path / "e"))
    accuracy = metrics["test/acc_tencrop" if ten_crop else "test/acc"]
    correct = sum(r["class"] == r["true_class"] for r in rows)
    assert correct / len(rows) == pytest.approx(accuracy)
    logged = re.search(r"accuracy (\S+) \((\d+) of 14", caplog.text)
    assert float(logged.group(1)) == pytest.approx(accuracy, abs=1e-4)
    assert int(logged.group(2)) == correct
    # a folder: no picture per image, no line per image, one confusion matrix
    assert not list(out.rglob("*_prediction.png"))
    assert (out / "confusion_matrix.png").is_file()
    assert not any("00000.jpg" in r.message for r in caplog.records)


def test_figures_are_named_by_relative_path_and_unreadable_files_skipped(
    ckpt, tiny_root, tmp_path, caplog
):
    folder = tmp_path / "images"
    shutil.copytree(tiny_root / "test", folder)
    # same names in every class folder; same stem, other suffix; a broken and a truncated file
    Image.open(folder / "8.0" / "00000.jpg").save(folder / "8.0" / "00000.png")
    (folder / "8.0" / "broken.jpg").write_bytes(b"not an image")
    data = (folder / "9.0" / "00000.jpg").read_bytes()
    (folder / "9.0" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    caplog.set_level(logging.INFO, logger="src.predict")
    results = run_predict(ckpt, folder, tmp_path / "p", "figures=true", "data.batch_size=4")
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    assert len(rows) == len(results) == 17 and len({r["path"] for r in rows}) == 17
    bad = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"8.0/broken.jpg", "9.0/truncated.jpg"}
    assert all(r["class"] == "" for r in rows if r["error"])
    assert all(r["class"] for r in rows if not r["error"])
    for path in ("8.0/broken.jpg", "9.0/truncated.jpg"):
        assert str(folder / path) in caplog.text
    assert "2 file(s) could not be read" in caplog.text
    assert re.search(r"accuracy \S+ \(\d+ of 15,", caplog.text)
    pngs = sorted(p.relative_to(tmp_path / "p").as_posix() for p in (tmp_path / "p").rglob("*"))
    pngs = [p for p in pngs if p.endswith("_prediction.png")]
    assert len(pngs) == len(set(pngs)) == 15
    assert {"8.0/00000.jpg_prediction.png", "8.0/00000.png_prediction.png"} <= set(pngs)
    assert "6.5/00000_prediction.png" in pngs
    figures = [r["figure"] for r in results if r["figure"]]
    assert len(set(figures)) == 15


def test_a_single_file_gets_its_picture_and_a_flat_folder_no_true_class(ckpt, tiny_root, tmp_path):
    image = tiny_root / "val" / "8.0" / "00000.jpg"
    (result,) = run_predict(ckpt, image, tmp_path / "one", "top_k=20")
    assert result["path"] == "00000.jpg" and len(result["top"]) == 14  # at most every class
    assert Path(result["figure"]) == tmp_path / "one" / "00000_prediction.png"
    assert "true_class" not in result
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(image, flat / "a.jpg")
    run_predict(ckpt, flat, tmp_path / "flat-out")
    (row,) = read_csv(tmp_path / "flat-out" / "predictions.csv")
    assert "true_class" not in row and row["path"] == "a.jpg"
    assert not (tmp_path / "flat-out" / "confusion_matrix.png").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("top_k=0", "top_k=0"), ("figures=sometimes", "figures='sometimes'"),
     ("data.batch_size=0", "data.batch_size=0"), ("data.num_workers=-1", "data.num_workers=-1"),
     ("device=tpu", "device='tpu'")],
)  # fmt: skip
def test_bad_settings_are_named(ckpt, tiny_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_predict(ckpt, tiny_root / "test", tmp_path, override)
