"""data.augment, the training operations: the default list draws exactly as the template did
before it was a list, operations are removed, added and reordered by config, any torchvision
transform runs per image, Cutout works on both backends, and a checkpoint of the previous format
still evaluates, predicts, exports and resumes."""

import errno
import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

import tests.frozen_batch_transform as frozen
from src.checkpoints import CheckpointWriteError, read_checkpoint
from src.data.augment import Cutout, PCANoise, PerImage, build_operations
from src.data.batch_transform import BatchTransform
from src.data.folders import ImageFolderDataModule
from src.eval import evaluate
from src.export import export
from src.predict import predict
from src.train import train
from src.utils import ConfigError
from src.utils.io import load_checkpoint
from src.utils.overrides import renamed
from tests.conftest import ROOT, compose, compose_config

FIXTURE = ROOT / "tests" / "fixtures" / "format3_cnn4.ckpt"
EXPECTED = json.loads(FIXTURE.with_suffix(".json").read_text())


@functools.cache
def configured_augment(*overrides: str) -> dict:
    """data.augment as ``data=imagefolder`` composes it with ``overrides``."""
    augment = compose("train", ["data=imagefolder", "data.root=x", *overrides]).data.augment
    return None if augment is None else OmegaConf.to_container(augment)


def synthetic_statistics(size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    eigvecs, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    return {
        "mean_image": torch.rand(3, size, size, generator=generator, dtype=torch.float64),
        "eigvals": torch.tensor([0.001, 0.004, 0.05], dtype=torch.float64),
        "eigvecs": eigvecs,
    }


SETTINGS = {  # input scale, std of PCA colour noise (0: none)
    "standardised": ("standardised", 0.0),
    "paper": ("mean_image", 0.1),
    "raw_pca": ("raw", 0.2),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("crop", ["random", "random_resized"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_the_default_operations_draw_exactly_as_the_switches_did(seed, crop, setting):
    """The published numbers were measured with the three switches: the configured list gives
    the same inputs and leaves the generator in the same state, bit for bit."""
    input_scale, noise = SETTINGS[setting]
    added = (["random_resized_crop"] if crop == "random_resized" else []) + (
        ["pca_noise"] if noise else []
    )
    overrides = [f"+data/augment=[{','.join(added)}]"] if added else []
    if noise:
        overrides.append(f"data.augment.pca_noise.std={noise}")
    mean, std, statistics = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], synthetic_statistics(40)
    transform = BatchTransform(
        32, mean, std, input_scale, build_operations(configured_augment(*overrides)),
        statistics=statistics,
    )  # fmt: skip
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(seed)
    expected = frozen.training_inputs(
        images, 32, mean, std, input_scale, crop, noise, statistics
    )  # fmt: skip
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    assert torch.equal(transform(images, "train"), expected)
    assert torch.equal(torch.get_rng_state(), state)


def test_operations_are_removed_added_and_reordered_by_config():
    default = configured_augment()
    assert list(default) == ["crop", "flip"]
    assert list(configured_augment("~data.augment.flip")) == ["crop"]
    assert build_operations(configured_augment("data.augment.flip=null"))[
        -1
    ].__class__.__name__ == ("RandomCrop")
    added = configured_augment("+data/augment=[cutout,pca_noise]", "data.augment.cutout.size=8")
    assert list(added) == ["crop", "flip", "cutout", "pca_noise"]
    ops = build_operations(added)
    assert isinstance(ops[2], Cutout) and ops[2].size == 8 and isinstance(ops[3], PCANoise)
    jitter = "+data.augment.jitter={_target_:torchvision.transforms.v2.ColorJitter,brightness:0.5}"
    (*_, listed) = build_operations(configured_augment(jitter))
    assert isinstance(listed, PerImage) and isinstance(listed.transform, v2.ColorJitter)
    # by the mapping's order, unless an entry gives its own
    moved = configured_augment("+data/augment=cutout", "+data.augment.cutout.order=0.5")
    assert [type(op).__name__ for op in build_operations(moved)] == [
        "RandomCrop", "Cutout", "HorizontalFlip"
    ]  # fmt: skip
    # experiments and variants set the list too
    assert configured_augment("+variant/augmentation=none") is None
    paper = compose("train", ["experiment=paper", "data.root=x"]).data.augment
    assert list(paper) == ["crop", "flip", "pca_noise"] and paper.pca_noise.std == 0.1


def test_a_torchvision_transform_runs_per_image_with_its_own_draw():
    images = torch.randint(0, 256, (1, 3, 12, 12), dtype=torch.uint8).expand(32, 3, 12, 12)
    erase = v2.RandomErasing(p=1.0, value=0)
    (op,) = build_operations({"erase": {"_target_": "torchvision.transforms.v2.RandomErasing",
                                        "p": 1.0, "value": 0}})  # fmt: skip
    torch.manual_seed(0)
    batch = op(images.contiguous(), BatchTransform(12))
    torch.manual_seed(0)
    assert torch.equal(batch, torch.stack([erase(image) for image in images]))
    assert len({tuple((b == 0).all(0).flatten().tolist()) for b in batch}) > 16


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_cutout_zeroes_one_square_of_each_training_image_on_both_backends(
    tiny_root, tmp_path, backend
):
    augment = {"cutout": {"_target_": "src.data.augment.Cutout", "size": 16}}
    dm = ImageFolderDataModule(
        root=str(tiny_root), resize_size=72, crop_size=64, batch_size=28, num_workers=0,
        backend=backend, cache_dir=str(tmp_path), augment=augment,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    squares, _ = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    clipped = 0
    for image in dm.transform(squares, "train"):
        zero = (image == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert zero.sum() == height * width and 0 < height <= 16 and 0 < width <= 16
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()  # one square, clipped or not
        clipped += height < 16 or width < 16
        assert (height == 16 or 0 in rows or 63 in rows) and (
            width == 16 or 0 in cols or 63 in cols
        )
    assert clipped > 0
    val, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(dm.transform(val, "val"), dm.evaluation_transform()(val, "val"))
    assert not (dm.transform(val, "val") == 0).all(1).any()


def test_a_mistake_in_the_list_is_named_by_its_key(tiny_root):
    with pytest.raises(ConfigError, match=r"data.augment=False: .* data.augment=null"):
        ImageFolderDataModule(root=str(tiny_root), augment=False)
    with pytest.raises(ConfigError, match="data.augment.cut=16 must be an operation"):
        ImageFolderDataModule(root=str(tiny_root), augment={"cut": 16})
    missing = {"cut": {"_target_": "src.data.augment.Cutot"}}
    with pytest.raises(
        ConfigError,
        match=r"data.augment.cut=\{'_target_': 'src.data.augment.Cutot'\} cannot be built",
    ):
        build_operations(missing)
    with pytest.raises(ConfigError, match="data.augment.cut: size=0 must be a whole number"):
        build_operations({"cut": {"_target_": "src.data.augment.Cutout", "size": 0}})
    with pytest.raises(ConfigError, match=r"data.augment.flip: p=2 must be a probability"):
        build_operations({"flip": {"_target_": "src.data.augment.HorizontalFlip", "p": 2}})


@pytest.mark.parametrize(
    ("override", "replacement"),
    [
        ("data.augment=false", "data.augment=null"),
        ("data.augment=true", "leave it out"),
        ("data.train_crop=random_resized", "+data/augment=random_resized_crop"),
        ("data.pca_noise=0.1", "+data/augment=pca_noise"),
    ],
)
def test_an_old_switch_on_the_command_line_gets_one_line(override, replacement):
    (line,) = renamed(["seed=1", override])
    assert line.startswith(f"{override}: renamed: use ") and replacement in line
    assert renamed(["data.augment=null", "+data/augment=cutout"]) == []


@pytest.fixture
def format3(tmp_path) -> Path:
    """The checkpoint of the previous format (tests/fixtures/README.md), as a copy."""
    return Path(shutil.copy(FIXTURE, tmp_path / "format3.ckpt"))


def test_a_checkpoint_of_the_previous_format_evaluates_predicts_and_exports_as_it_did(
    format3, tiny_root, tmp_path
):
    upgraded = read_checkpoint(format3)["datamodule_hyper_parameters"]
    assert list(upgraded["augment"]) == ["crop", "flip", "pca_noise"]
    assert upgraded["augment"]["pca_noise"]["std"] == 0.1
    assert not {"train_crop", "pca_noise"} & set(upgraded)
    data = [f"data.root={tiny_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0"]
    args = [f"ckpt_path={format3}", "ten_crop=true", "trainer.accelerator=cpu", *data]
    metrics = evaluate(compose_config("eval", args, tmp_path / "eval"))
    assert metrics == pytest.approx(EXPECTED["eval_test_ten_crop"], rel=1e-6)
    rows = predict(compose_config(
        "predict", [f"ckpt_path={format3}", f"image={tiny_root / 'test'}"], tmp_path / "predict"
    ))  # fmt: skip
    assert {r["path"]: [r["class"], pytest.approx(r["probability"], rel=1e-5)] for r in rows} == (
        EXPECTED["predict_test"]
    )
    out = export(compose_config("export", [f"ckpt_path={format3}"], tmp_path / "export"))
    assert json.loads((out / "preprocessing.json").read_text()) == EXPECTED["preprocessing"]


def test_a_checkpoint_of_the_previous_format_resumes(format3, tiny_root, train_config):
    saved = load_checkpoint(format3)
    cfg = train_config(
        "model=cnn4", "model.net.widths=[16,16,32]", "data.input_scale=mean_image",
        "+data/augment=pca_noise", "seed=0", f"ckpt_path={format3}", "trainer.max_epochs=3",
    )  # fmt: skip
    train(cfg)
    written = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert written["epoch"] == saved["epoch"] + 1 == 2
    assert list(written["datamodule_hyper_parameters"]["augment"]) == ["crop", "flip", "pca_noise"]


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_one_line(train_config, monkeypatch):
    """The disk fills (or refuses) at the second epoch's checkpoints: the run stops naming the
    file and the bytes, and the first epoch's checkpoint is whole."""
    cfg = train_config("trainer.max_epochs=3", "test=false")
    real_fsync, failure = os.fsync, {"epoch": 1, "errno": errno.ENOSPC}

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        written = list((Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))
        if ".ckpt.tmp-" in name and len(written) >= 2:
            raise OSError(failure["errno"], os.strerror(failure["errno"]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError) as err:
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    message = str(err.value)
    assert (
        f"Could not write the checkpoint '{Path(cfg.paths.output_dir) / 'checkpoints'}" in message
    )
    assert "No space left on device" in message and "bytes needed" in message
    assert "free on its disk" in message and "is intact" in message and "\n" not in message
    assert load_checkpoint(last)["epoch"] == 0
    assert not list(last.parent.glob(".*tmp*"))
    failure["errno"] = errno.EACCES
    cfg = train_config("trainer.max_epochs=3", "test=false")
    with pytest.raises(CheckpointWriteError, match="no permission to write there"):
        train(cfg)
