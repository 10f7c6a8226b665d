import os
import shutil

import numpy as np
import pytest
import torch
from lightning import Trainer
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from src.data.cache import CachedImages, cache_folder, ensure_cache
from src.data.cifar10 import CIFAR10DataModule
from src.data.folders import ImageFolderDataModule
from src.data.images import load_rgb
from src.models.classifier import ImageClassifier


@pytest.fixture
def tree(tiny_root, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(tiny_root, root)
    return root


def test_cache_holds_the_pil_paths_pixels_and_labels(tree, tmp_path):
    folder = ensure_cache(tree / "val", tmp_path / "cache", 64, tmp_path / "verdicts.json")
    cached = CachedImages(folder)
    folder_set = ImageFolder(str(tree / "val"), loader=load_rgb)
    assert cached.classes == folder_set.classes and cached.labels.tolist() == folder_set.targets
    square = v2.Compose([v2.PILToTensor(), v2.Resize(64), v2.CenterCrop(64)])
    for i in (0, len(cached) - 1):
        expected = square(folder_set[i][0]).numpy()
        assert np.array_equal(cached.images[i], expected)
    images, labels = cached.__getitems__([3, 1])
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.tolist() == [folder_set.targets[3], folder_set.targets[1]]


def test_both_backends_deliver_identical_uint8_squares(tree, tmp_path):
    """The one pixel path: the same files give the same uint8 squares, in the same order, from
    the memory map and from the workers' decoding."""
    batches = {}
    for backend in ("pil", "cache"):
        dm = ImageFolderDataModule(
            root=str(tree), resize_size=64, crop_size=56, batch_size=5, num_workers=0,
            backend=backend, cache_dir=str(tmp_path / "cache"),
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        batches[backend] = [
            (x, y) for split in ("train", "val") for x, y in dm.loader(dm.datasets[split])
        ]
    for (pil, pil_labels), (cache, cache_labels) in zip(*batches.values(), strict=True):
        assert pil.dtype == cache.dtype == torch.uint8 and pil.shape[1:] == (3, 64, 64)
        assert torch.equal(pil, cache) and torch.equal(pil_labels, cache_labels)


def test_cache_is_rebuilt_when_files_or_sizes_change(tree, tmp_path):
    cache = tmp_path / "cache"
    first = ensure_cache(tree / "val", cache, 64, cache / "verdicts.json")
    assert ensure_cache(tree / "val", cache, 64, cache / "verdicts.json") == first
    assert cache_folder(tree / "val", cache, 72) != first
    image = next((tree / "val" / "8.0").iterdir())
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    touched = ensure_cache(tree / "val", cache, 64, cache / "verdicts.json")
    assert touched != first and (touched / "index.json").is_file()
    shutil.copy(image, image.with_name("added.jpg"))
    assert (
        len(CachedImages(ensure_cache(tree / "val", cache, 64, cache / "verdicts.json")))
        == len(CachedImages(first)) + 1
    )


def test_a_half_written_cache_is_never_read(tree, tmp_path):
    """What a killed build leaves (a temporary folder, a memory map without its index) is
    neither read nor mistaken for the finished cache, and the next build starts afresh."""
    cache = tmp_path / "cache"
    final = cache_folder(tree / "val", cache, 64)
    partial = final.with_name(final.name + ".tmp-999999")
    partial.mkdir(parents=True)
    np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=(2, 3))
    with pytest.raises(FileNotFoundError, match="not a finished image cache"):
        CachedImages(partial)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        CachedImages(final)
    assert ensure_cache(tree / "val", cache, 64, cache / "verdicts.json") == final
    assert len(CachedImages(final)) == 14


def evaluate(root, cache_dir, backend, ten_crop=False):
    dm = ImageFolderDataModule(
        root=str(root), resize_size=72, crop_size=64, batch_size=4, num_workers=0,
        backend=backend, cache_dir=str(cache_dir), ten_crop=ten_crop,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ImageClassifier(dm.classes, {"_target_": "src.models.cnn4.CNN4", "init": "paper"})
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (val,) = trainer.validate(model, datamodule=dm, verbose=False)
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    return val | test


def test_cache_and_pil_paths_give_the_same_metrics(tiny_root, tmp_path):
    """No tolerance needed: both resize each image once with the same Pillow call, crop the same
    pixels and normalise with the same torchvision functions, so the inputs are identical bit for
    bit, in the same batches, and so is every metric, the loss included."""
    for ten_crop in (False, True):
        pil = evaluate(tiny_root, tmp_path, "pil", ten_crop)
        assert evaluate(tiny_root, tmp_path, "cache", ten_crop) == pil


def test_cached_training_batches_are_augmented_on_the_device(tiny_root, tmp_path):
    dm = ImageFolderDataModule(
        root=str(tiny_root), resize_size=72, crop_size=64, batch_size=8, num_workers=0,
        backend="cache", cache_dir=str(tmp_path),
    )  # fmt: skip
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
    model = ImageClassifier(dm.classes, {"_target_": "src.models.cnn4.CNN4"}, optimizer=sgd)
    seen = []
    model.on_train_batch_start = lambda batch, _: seen.append(batch[0])
    trainer = Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert [x.shape for x in seen] == [(8, 3, 64, 64)] * 2 and seen[0].dtype == torch.float32
    assert -5 < seen[0].mean() < 5  # standardised, not 0-255


def test_backend_mistakes_are_named(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="data.backend='lmdb'"):
        ImageFolderDataModule(root=str(tiny_root), backend="lmdb")
    with pytest.raises(ValueError, match="data.cache_dir is not set"):
        ImageFolderDataModule(root=str(tiny_root), backend="cache", cache_dir=None)
    with pytest.raises(ValueError, match="use data.backend=pil"):
        CIFAR10DataModule(root=str(tmp_path), backend="cache", cache_dir=str(tmp_path))


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return load_rgb(path)


def test_one_loader_turns_every_mode_into_upright_rgb(tmp_path):
    grey = save(Image.new("L", (4, 2), 77), tmp_path / "grey.png")
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)
    clear = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    clear.putpixel((0, 0), (255, 0, 0, 255))
    rgba = save(clear, tmp_path / "rgba.png")
    assert rgba.getpixel((0, 0)) == (255, 0, 0) and rgba.getpixel((1, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255])
    palette.info["transparency"] = 1
    assert save(palette, tmp_path / "palette.png").getpixel((0, 0)) == (255, 255, 255)
    cmyk = save(Image.new("CMYK", (4, 2), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200 > cmyk.getpixel((0, 0))[1]
    deep = Image.fromarray(np.full((2, 4), 257 * 200, dtype=np.uint16))
    assert save(deep, tmp_path / "deep.png").getpixel((0, 0)) == (200, 200, 200)
    wide = Image.new("RGB", (4, 2))
    exif = wide.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to be upright
    assert save(wide, tmp_path / "rotated.jpg", exif=exif).size == (2, 4)
