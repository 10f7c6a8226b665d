"""A folder that holds its class folders directly: split by the data module, the split kept in
the run folder and the checkpoint, and refused where the folder has changed since."""

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from src.checkpoints import datamodule_state
from src.data import splits as splits_module
from src.data.datamodule import BadImagesError
from src.data.folders import ImageFolderDataModule
from src.data.splits import SHOWN, SplitChangedError, check_unchanged, class_of, make_split
from src.eval import evaluate
from src.train import train
from src.utils.io import load_checkpoint
from tests.conftest import compose_config, imagefolder_overrides


@pytest.fixture
def flat_root(tiny_root: Path, tmp_path: Path) -> Path:
    """The tiny tree's 14 class folders with all 4 images of each (2 train, 1 val, 1 test) in
    one folder per class."""
    root = tmp_path / "flat"
    for image in sorted(tiny_root.glob("*/*/*.jpg")):
        split, name = image.parts[-3], image.parts[-2]
        (root / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / name / f"{split}-{image.name}")
    return root


def files(counts: dict[str, int]) -> dict[str, str]:
    """Relative path -> class of a flat folder with these counts."""
    paths = [f"{name}/{i:03}.jpg" for name, count in counts.items() for i in range(count)]
    return {path: class_of(path) for path in paths}


def test_the_split_is_seeded_and_stratified(tmp_path):
    counts = {"b": 30, "a": 10, "c": 3}
    split = make_split(tmp_path, files(counts), 0.1, 0.1, seed=0)
    assert split == make_split(tmp_path, dict(reversed(files(counts).items())), 0.1, 0.1, seed=0)
    assert split != make_split(tmp_path, files(counts), 0.1, 0.1, seed=1)
    # every class in every split, at its share (at least one), training keeps the rest
    shares = {name: Counter(p.split("/")[0] for p in paths) for name, paths in split.items()}
    assert shares["val"] == shares["test"] == {"a": 1, "b": 3, "c": 1}
    assert shares["train"] == {"a": 8, "b": 24, "c": 1}
    assert sorted(sum(split.values(), [])) == sorted(files(counts))
    # label order: class names sorted, as ImageFolder numbers them
    assert split["val"] == sorted(split["val"])
    no_test = make_split(tmp_path, files(counts), 0.2, 0, seed=0)
    assert no_test["test"] == [] and len(no_test["val"]) == 2 + 6 + 1


def test_too_small_classes_are_named_with_their_counts(flat_root, tmp_path):
    for name, keep in (("8.0", 1), ("9.0", 2)):
        for image in sorted((flat_root / name).iterdir())[keep:]:
            image.unlink()
    dm = ImageFolderDataModule(str(flat_root), num_workers=0, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"'8.0' \(1 image\), '9.0' \(2 images\)\.") as err:
        dm.setup("fit")
    assert "needs at least 3" in str(err.value) and "data.test_fraction=0" in str(err.value)
    with pytest.raises(ValueError, match=r"train and val: '8.0' \(1 image\)\. .* at least 2"):
        make_split(flat_root, files({"8.0": 1, "9.0": 3}), 0.1, 0, seed=0)


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_unreadable_files_of_a_flat_folder_are_listed_or_skipped(backend, flat_root, tmp_path):
    broken = flat_root / "8.0" / "broken.jpg"
    broken.write_bytes(b"not a picture")
    options = {"resize_size": 72, "crop_size": 64, "num_workers": 0, "backend": backend}
    options["cache_dir"] = str(tmp_path / "cache")
    with pytest.raises(BadImagesError, match=f"1 of 57 files .*\n  {broken}: "):
        ImageFolderDataModule(str(flat_root), **options).prepare_data()
    dm = ImageFolderDataModule(str(flat_root), skip_bad_images=True, **options)
    dm.prepare_data()
    dm.setup("fit")
    assert "8.0/broken.jpg" in sum(dm.split.lists.values(), [])  # in the split, never read
    assert sum(len(d) for d in dm.datasets.values()) == 56


def test_a_change_is_listed_trimmed_with_counts(tmp_path):
    split = {"train": list(files({"a": 3})), "val": ["b/0.jpg"], "test": []}
    found = list(files({"a": 2})) + [f"new/{i:02}.jpg" for i in range(SHOWN + 2)]
    with pytest.raises(SplitChangedError) as err:
        check_unchanged(tmp_path, split, found, "in the checkpoint")
    message = str(err.value)
    assert f"{SHOWN + 2} added, 2 missing" in message and "... and 2 more" in message
    assert "new/00.jpg" in message and f"new/{SHOWN + 1:02}.jpg" not in message
    assert "a/002.jpg" in message and "b/0.jpg" in message


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_both_backends_train_on_a_flat_folder(backend, flat_root, train_config, tmp_path, caplog):
    """Nothing but data.root: the split is made, logged, written beside the run and carried by
    the checkpoint in plain lists (loadable with weights_only)."""
    data = [*imagefolder_overrides(flat_root, tmp_path / "cache"), f"data.backend={backend}"]
    cfg = train_config(data=data)
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert "test/acc" in metrics
    assert f"split the images of {flat_root}" in caplog.text
    assert "28 train, 14 val, 14 test" in caplog.text
    run = Path(cfg.paths.output_dir)
    split = json.loads((run / "split.json").read_text())
    assert [len(split[name]) for name in ("train", "val", "test")] == [28, 14, 14]
    assert datamodule_state(load_checkpoint(run / "checkpoints" / "last.ckpt"))["split"] == split


def test_eval_and_resume_read_the_checkpoints_split_and_stop_when_files_change(
    flat_root, train_config, tmp_path, caplog, monkeypatch
):
    data = imagefolder_overrides(flat_root, tmp_path / "cache") + ["data.backend=pil"]
    cfg = train_config(data=data)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    split = json.loads((run / "split.json").read_text())
    (run / "split.json").unlink()
    last = run / "checkpoints" / "last.ckpt"

    def no_new_split(*_):
        raise AssertionError("a new split was made")

    def evaluate_in(folder: str, ckpt: Path = last) -> dict[str, float]:
        args = [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"]
        return evaluate(compose_config("eval", args, tmp_path / folder))

    # a checkpoint written before the module moved out of src.data.datamodule names it there
    moved = load_checkpoint(last) | {
        "datamodule_target": "src.data.datamodule.ImageFolderDataModule"
    }
    torch.save(moved, tmp_path / "moved.ckpt")
    with monkeypatch.context() as patched:
        patched.setattr(splits_module, "make_split", no_new_split)
        metrics = evaluate_in("eval")
        assert evaluate_in("eval-moved", tmp_path / "moved.ckpt") == metrics
    assert json.loads((tmp_path / "eval" / "split.json").read_text()) == split
    assert json.loads((tmp_path / "eval-moved" / "split.json").read_text()) == split

    gone = flat_root / split["val"][0]
    shutil.copy(gone, flat_root / "8.0" / "added.jpg")
    gone.unlink()
    listed = (
        r"1 added, 1 missing:\n  added \(1\):\n    8\.0/added\.jpg\n  missing \(1\):\n"
        rf"    {split['val'][0]}\nRestore the folder"
    )
    with pytest.raises(SplitChangedError, match=listed):
        evaluate_in("changed")
    with pytest.raises(SplitChangedError, match="recorded in the checkpoint: 1 added, 1 missing"):
        train(train_config(f"ckpt_path={last}", "trainer.max_epochs=2", data=data))

    # a new run splits the folder as it is now, and says the files changed since the last split
    caplog.clear()
    fresh = train_config("+trainer.limit_train_batches=1", "test=false", data=data)
    with caplog.at_level(logging.INFO):
        train(fresh)
    assert "changed since they were last split" in caplog.text and "8.0/added.jpg" in caplog.text
    new_split = json.loads((Path(fresh.paths.output_dir) / "split.json").read_text())
    assert "8.0/added.jpg" in sum(new_split.values(), [])
