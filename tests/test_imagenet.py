"""data=imagenet on a tiny archive set in exactly the official format: a tar of per-class tars,
a flat validation tar, and a devkit .tar.gz whose meta.mat has the real struct layout, with
ILSVRC2012_IDs in another order than the sorted wnids."""

import io
import json
import logging
import shutil
import socket
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.utils import calculate_md5

from bench.imagenet_build import write_archive_set
from src.checkpoints import check_resume, load_classifier
from src.data import cache, imagenet
from src.data.cache import CachedImages
from src.data.datamodule import BadImagesError
from src.data.imagenet import ImageNetDataModule
from src.eval import evaluate
from src.train import train
from src.utils import ConfigError, MissingFileError, UserError
from tests.conftest import compose, compose_config, quick_overrides

# ILSVRC2012_ID -> wnid: the IDs run against the sorted wnids, so an ID used as a label fails
LEAVES = {1: "n03000003", 2: "n01000001", 3: "n02000002"}
WORDS = {"n03000003": "jay", "n01000001": "tench, Tinca tinca", "n02000002": "goldfinch"}
COLOURS = {"n01000001": (220, 40, 40), "n02000002": (40, 220, 40), "n03000003": (40, 40, 220)}
# the validation images' ILSVRC2012_IDs, image 1 first
TRUTH = [1, 2, 3, 3, 1, 2]
TRAIN_PER_CLASS = 3
SIZE = 72


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, SIZE), colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_archives(folder: Path, bad_val: int | None = None) -> Path:
    """The tiny set, each class a solid colour; ``bad_val``: that validation image truncated."""
    # the classes in ID order, not sorted; the validation images last first: labels come from
    # the names, not from positions in the archives
    train = {wnid: [jpeg(COLOURS[wnid])] * TRAIN_PER_CLASS for wnid in LEAVES.values()}
    val = {i: jpeg(COLOURS[LEAVES[TRUTH[i - 1]]]) for i in range(len(TRUTH), 0, -1)}
    if bad_val is not None:
        val[bad_val] = val[bad_val][:200]
    return write_archive_set(folder, LEAVES, train, val, TRUTH, WORDS)


def listing(folder: Path) -> list[tuple]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """The archives in a read-only folder (as a shared copy often is)."""
    folder = write_archives(tmp_path_factory.mktemp("imagenet") / "ILSVRC2012")
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def module(root: Path, cache_dir: Path, **kwargs) -> ImageNetDataModule:
    settings = {"resize_size": SIZE, "crop_size": 64, "batch_size": 4, "num_workers": 0}
    return ImageNetDataModule(root=str(root), cache_dir=str(cache_dir), **settings | kwargs)


def colour_of(image: torch.Tensor | np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(float(c))) for c in np.asarray(image).reshape(3, -1).mean(1))


def assert_labels_match_colours(dataset: CachedImages, classes: list[str]) -> None:
    for i in range(len(dataset)):
        image, label = dataset[i]
        expected = COLOURS[classes[label]]
        assert max(abs(a - b) for a, b in zip(colour_of(image), expected, strict=True)) <= 3


def test_labels_follow_the_devkit_and_nothing_is_written_beside_the_archives(archives, tmp_path):
    before = listing(archives)
    dm = module(archives, tmp_path / "cache")
    assert dm.classes == sorted(LEAVES.values())  # the leaves only, as ImageFolder sorts them
    assert dm.class_words == {wnid: WORDS[wnid] for wnid in sorted(WORDS)}
    dm.prepare_data()
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert (len(train), len(val)) == (len(LEAVES) * TRAIN_PER_CLASS, len(TRUTH))
    assert dm.datasets["test"] is val
    assert train.classes == val.classes == dm.classes
    assert_labels_match_colours(train, dm.classes)
    assert_labels_match_colours(val, dm.classes)
    # image i's label: its ID's wnid's place among the sorted wnids, never the ID itself
    with tarfile.open(archives / "ILSVRC2012_img_val.tar") as tar:
        order = [int(name[-13:-5]) for name in tar.getnames()]
    wnids = [LEAVES[TRUTH[number - 1]] for number in order]
    assert val.labels.tolist() == [dm.classes.index(w) for w in wnids]
    assert listing(archives) == before and stat.S_IMODE(archives.stat().st_mode) == 0o555
    # a second module finds the caches built
    again = module(archives, tmp_path / "cache")
    again.prepare_data()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        dm.cache_path("train").name, dm.cache_path("val").name,
    ]  # fmt: skip


def test_a_killed_build_resumes_and_skips_the_finished_chunks(
    archives, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(imagenet, "VAL_CHUNK", 2)
    decoded, real = [], cache._decoded

    def killed_in_chunk_two(data, size):
        decoded.append(1)
        if len(decoded) == 3:
            raise KeyboardInterrupt("killed")
        return real(data, size)

    monkeypatch.setattr(cache, "_decoded", killed_in_chunk_two)
    dm = module(archives, tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    folder = dm.cache_path("val")
    parts = folder / cache.CHUNKS
    assert [p.name for p in parts.iterdir()] == ["000000-000002"]
    assert not (folder / cache.INDEX).exists()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.rglob("*")}
    # what a SIGKILL leaves: the temporary chunk of a process that is gone
    gone = 4_194_305  # above Linux's highest process id (2**22) and any other system's
    stale = parts / f"{cache.TMP}{socket.gethostname()}-{gone}-000002-000004"
    stale.mkdir()

    monkeypatch.setattr(cache, "_decoded", real)
    caplog.set_level(logging.INFO, logger="src.data.cache")
    dm.prepare_data()
    assert "1 of 3 chunks already built, skipped" in caplog.text
    assert not stale.exists()
    kept = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (parts / "000000-000002").rglob("*")
    }
    assert all(finished[name] == kept[name] for name in kept)
    resumed = CachedImages(folder)

    whole = module(archives, tmp_path / "uninterrupted")
    whole.prepare_data()
    fresh = CachedImages(whole.cache_path("val"))
    assert len(resumed.chunks) == 3 and resumed.chunks == fresh.chunks
    rows = np.arange(len(fresh))
    assert np.array_equal(resumed.images[rows], fresh.images[rows])
    assert torch.equal(resumed.labels, fresh.labels)
    # a batch across chunks, as a loader reads it
    images, labels = resumed.__getitems__([5, 0, 3])
    assert torch.equal(images[1], torch.from_numpy(np.array(fresh.images[0])))
    assert labels.tolist() == [fresh.labels[5], fresh.labels[0], fresh.labels[3]]


def test_verify_archives_names_the_file_that_differs(archives, tmp_path, monkeypatch):
    official = dict(imagenet.OFFICIAL_MD5)
    found = calculate_md5(archives / "ILSVRC2012_img_train.tar")
    # the devkit and validation archives as if they were the official ones
    for name in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        monkeypatch.setitem(imagenet.OFFICIAL_MD5, name, calculate_md5(archives / name))
    with pytest.raises(UserError) as err:
        module(archives, tmp_path, verify_archives=True).prepare_data()
    message = str(err.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" not in message
    assert f"expected {official['ILSVRC2012_img_train.tar']}, found {found}" in message
    assert not (tmp_path / "statistics").exists() and not list(tmp_path.glob("imagenet-*"))


def test_missing_archives_and_wrong_settings_are_named(archives, tmp_path):
    with pytest.raises(MissingFileError, match="ILSVRC2012_devkit_t12.tar.gz") as err:
        _ = module(tmp_path / "nowhere", tmp_path).classes
    assert "data=imagefolder" in str(err.value)
    only_devkit = tmp_path / "devkit_only"
    only_devkit.mkdir()
    shutil.copy(archives / "ILSVRC2012_devkit_t12.tar.gz", only_devkit)
    dm = module(only_devkit, tmp_path)
    assert dm.classes == sorted(LEAVES.values())
    with pytest.raises(MissingFileError) as err:
        dm.prepare_data()
    assert "has no ILSVRC2012_img_val.tar, ILSVRC2012_img_train.tar" in str(err.value)
    with pytest.raises(ConfigError, match="data.backend='pil'"):
        module(archives, tmp_path, backend="pil")


def test_an_undecodable_image_in_the_archive_is_named_or_skipped(tmp_path):
    root = write_archives(tmp_path / "broken", bad_val=2)
    with pytest.raises(BadImagesError, match="ILSVRC2012_img_val.tar/ILSVRC2012_val_00000002"):
        module(root, tmp_path / "cache").prepare_data()
    dm = module(root, tmp_path / "cache", skip_bad_images=True)
    dm.prepare_data()
    dm.setup("fit")
    val = dm.datasets["val"]
    assert len(val) == len(TRUTH) - 1
    assert_labels_match_colours(val, dm.classes)


@pytest.mark.parametrize(
    "order", ["experiment=paper data=imagenet", "data=imagenet experiment=paper"]
)
def test_the_paper_recipe_composes_on_imagenet(order):
    cfg = compose("train", [*order.split(), "data.root=/archives"])
    assert cfg.data._target_ == "src.data.imagenet.ImageNetDataModule"
    assert cfg.data.input_scale == "mean_image" and cfg.data.augment.pca_noise.std == 0.1
    assert cfg.data.backend == "cache"
    assert (
        cfg.data.verify_archives is False and cfg.model.net._target_ == "src.models.alexnet.AlexNet"
    )


def imagenet_overrides(root: Path, cache_dir: Path) -> list[str]:
    return [
        "data=imagenet", f"data.root={root}", f"data.cache_dir={cache_dir}",
        f"data.resize_size={SIZE}", "data.crop_size=64",
    ]  # fmt: skip


def test_the_paper_recipe_trains_and_a_checkpoint_evaluates(archives, tmp_path):
    """Mean image and PCA noise measured from the training cache; the checkpoint alone rebuilds
    the data module for src.eval."""
    cache_dir = tmp_path / "cache"
    overrides = ["experiment=paper", *imagenet_overrides(archives, cache_dir)]
    overrides += [
        *quick_overrides(tmp_path / "logs"),
        "model.net.widths=[8,8,8,8,8]",
        "model.net.hidden=16",
    ]
    cfg = compose_config("train", overrides, tmp_path / "run")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert list(json.loads((run / "class_indices.json").read_text()).values()) == sorted(WORDS)
    assert json.loads((run / "class_words.json").read_text())["n01000001"] == "tench, Tinca tinca"
    assert len(list((cache_dir / "statistics").glob("imagenet-train-*.npz"))) == 1
    best = next((run / "checkpoints").glob("epoch_*.ckpt"))
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["datamodule_target"] == "src.data.imagenet.ImageNetDataModule"
    assert checkpoint["ImageNetDataModule"]["mean_image"].shape == (3, SIZE, SIZE)
    # resuming may switch the MD5 check on or off: it changes nothing the model sees
    settings = checkpoint["datamodule_hyper_parameters"] | {"verify_archives": True}
    check_resume(best, load_classifier(best)[0], ImageNetDataModule(**settings))

    results = evaluate(
        compose_config("eval", [f"ckpt_path={best}", "trainer.accelerator=cpu"], tmp_path / "e")
    )
    assert results["test/acc"] == pytest.approx(metrics["test/acc"])
    assert results["test/acc_tencrop"] == pytest.approx(metrics["test/acc_tencrop"])

    # evaluation needs neither the training archive nor its cache, and builds only validation's
    elsewhere = tmp_path / "val_only"
    elsewhere.mkdir()
    for name in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        shutil.copy2(archives / name, elsewhere)
    args = [f"ckpt_path={best}", "trainer.accelerator=cpu", f"data.root={elsewhere}"]
    args.append(f"data.cache_dir={tmp_path / 'eval_cache'}")
    again = evaluate(compose_config("eval", args, tmp_path / "e2"))
    assert again["test/acc"] == pytest.approx(metrics["test/acc"])
    assert [p.name.split("-")[1] for p in (tmp_path / "eval_cache").glob("imagenet-*")] == ["val"]
