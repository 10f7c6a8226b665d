import shutil
from pathlib import Path

import pytest
import torch
from lightning import Trainer

from src.data.folders import ImageFolderDataModule, check_image_folder
from src.data.micrographs import CLASSES, MicrographDataModule


def make_module(root: Path, **kwargs) -> ImageFolderDataModule:
    sizes = {"resize_size": 72, "crop_size": 64, "batch_size": 4, "num_workers": 0}
    return ImageFolderDataModule(root=str(root), **(sizes | kwargs))


def test_micrograph_module_batches(tiny_root):
    dm = MicrographDataModule(
        root=str(tiny_root), train_per_class=2, val_per_class=1, test_per_class=1,
        image_size=72, resize_size=72, crop_size=64, batch_size=4, num_workers=0,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    # class names in label order: what class_indices.json and checkpoints record
    assert dm.classes == dm.datasets["train"].classes == sorted(CLASSES)
    squares, y = next(iter(dm.train_dataloader()))
    assert squares.shape == (4, 3, 72, 72) and squares.dtype == torch.uint8
    x = dm.transform(squares, "train")
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert y.max() < 14
    assert len(dm.datasets["train"]) == 28 and len(dm.datasets["val"]) == 14


def test_augmentation_random_for_train_fixed_for_eval(tiny_root):
    dm = make_module(tiny_root)
    dm.setup("fit")
    square = dm.datasets["train"][0][0][None]
    torch.manual_seed(0)
    crops = [dm.transform(square, "train") for _ in range(8)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert torch.equal(dm.transform(square, "val"), dm.transform(square, "val"))


def test_ten_crop_and_raw_scale_mean_subtraction(tiny_root):
    dm = make_module(tiny_root, ten_crop=True, mean=[0.5] * 3, input_scale="raw")
    dm.setup("test")
    x = dm.transform(dm.datasets["test"][0][0][None], "test", ten_crop=True)[0]
    assert x.shape == (10, 3, 64, 64)
    assert torch.allclose(x[4].flip(-1), x[9])  # the centre crop and its mirror image
    assert x.abs().max() > 100  # pixel scale, not 0-1


def test_unknown_input_scale_is_named(tiny_root):
    with pytest.raises(ValueError, match="data.input_scale='pixels'"):
        make_module(tiny_root, input_scale="pixels")


def test_test_split_falls_back_to_val(tiny_root, tmp_path):
    root = tmp_path / "no_test"
    shutil.copytree(tiny_root / "train", root / "train")
    shutil.copytree(tiny_root / "val", root / "val")
    dm = make_module(root)
    dm.setup("test")
    assert {Path(path).parts[-3] for path, _ in dm.datasets["test"].samples} == {"val"}


def test_missing_root_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="data=micrographs") as err:
        check_image_folder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_class_mismatch_lists_the_difference(tiny_root, tmp_path):
    root = tmp_path / "mismatch"
    shutil.copytree(tiny_root, root)
    (root / "val" / "6.5").rename(root / "val" / "6.0")
    with pytest.raises(ValueError, match=r"only in train: \['6.5'\]; only in val: \['6.0'\]"):
        check_image_folder(root)


def test_empty_class_folder_is_named(tiny_root, tmp_path):
    root = tmp_path / "empty"
    shutil.copytree(tiny_root, root)
    for f in (root / "train" / "9.0").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="has no images") as err:
        check_image_folder(root)
    assert str(root / "train" / "9.0") in str(err.value)


def test_global_batch_must_divide_by_devices(tiny_root):
    dm = make_module(tiny_root, batch_size=5)
    dm.trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(ValueError, match=r"data.batch_size=5 .* 2 devices"):
        dm.setup("fit")
    dm.hparams.batch_size = 6
    dm.setup("fit")
    assert dm.batch_size_per_device == 3


def eval_batches(dm: ImageFolderDataModule, split: str) -> torch.Tensor:
    """One pass over a split as the model receives it, on either backend."""
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    return torch.cat([dm.transform(x, split) for x, _ in loader])


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_augment_val_and_resized_crops_on_both_backends(tiny_root, tmp_path, backend):
    """augment_val: validation and test draw the training crops anew every pass (the seed
    article's recipe); without it they are the fixed centre crop. A random-resized crop
    trains on crop_size crops."""
    resized = {"crop": {"_target_": "src.data.augment.RandomResizedCrop"}}
    options = {"backend": backend, "cache_dir": str(tmp_path), "augment": resized}
    dm = make_module(tiny_root, augment_val=True, **options)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    for split in ("val", "test"):
        first = eval_batches(dm, split)
        assert first.shape[1:] == (3, 64, 64) and not torch.equal(first, eval_batches(dm, split))
    x = dm.transform(next(iter(dm.train_dataloader()))[0], "train")
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    fixed = make_module(tiny_root, **options)
    fixed.setup("fit")
    assert torch.equal(eval_batches(fixed, "val"), eval_batches(fixed, "val"))


def test_augment_val_is_checked(tiny_root):
    with pytest.raises(ValueError, match="data.augment_val='yes'"):
        make_module(tiny_root, augment_val="yes")
