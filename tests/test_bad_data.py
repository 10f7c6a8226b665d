"""Strangers' image folders: broken files found before training, odd image modes loaded right."""

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.datamodule import BadImagesError
from src.data.images import load_rgb
from src.train import train
from tests.conftest import imagefolder_overrides

BAD_FILES = {
    "notes.png": b"these are notes, not a picture\n",
    "empty.jpg": b"",
}


@pytest.fixture
def messy_root(tiny_root: Path, tmp_path: Path) -> Path:
    """The tiny tree plus a text file named .png, an empty .jpg and a truncated JPEG in train/,
    and a non-image file that ImageFolder ignores anyway."""
    root = tmp_path / "messy"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("manifest.json"))
    folder = root / "train" / "8.0"
    for name, data in BAD_FILES.items():
        (folder / name).write_bytes(data)
    whole = next(folder.glob("0*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "README.txt").write_text("ignored: not an image extension")
    return root


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_every_bad_file_is_listed_before_training(
    backend, messy_root, train_config, tmp_path, caplog
):
    data = [*imagefolder_overrides(messy_root, tmp_path / "cache"), f"data.backend={backend}"]
    cfg = train_config(data=data)
    with caplog.at_level(logging.INFO), pytest.raises(BadImagesError) as err:
        train(cfg)
    message = str(err.value)
    assert "3 of 59 files" in message and "data.skip_bad_images=true" in message
    for name in ["notes.png", "empty.jpg", "truncated.jpg"]:
        assert str(messy_root / "train" / "8.0" / name) in message
    assert "image file is truncated" in message
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # no step was taken
    # each file is decoded once: by the check, or by the cache build, which records its verdicts
    decoded_by_check = "Checking 59 of 59 images" in caplog.text
    assert decoded_by_check == (backend == "pil")

    # verdicts are kept by path, size and mtime: the next run decodes only what changed
    caplog.clear()
    shutil.copy(next(messy_root.glob("train/8.0/0*.jpg")), messy_root / "train/8.0/empty.jpg")
    with caplog.at_level(logging.INFO), pytest.raises(BadImagesError, match="2 of 59 files"):
        train(train_config(data=data))
    changed = "Checking 1 of 59 images" if backend == "pil" else "Cached 31 images"
    assert changed in caplog.text and caplog.text.count("Cached") == (backend == "cache")
    # the verdicts live in data.cache_dir, nothing is written into the user's folder
    assert len(list((tmp_path / "cache" / "verified").glob("messy-*.json"))) == 1
    assert not list(messy_root.rglob("*.json"))


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_skip_bad_images_trains_without_them(backend, messy_root, train_config, tmp_path, caplog):
    data = [*imagefolder_overrides(messy_root, tmp_path / "cache"), f"data.backend={backend}"]
    cfg = train_config("data.skip_bad_images=true", data=data)
    metrics = train(cfg)
    assert "test/acc" in metrics
    assert "Skipping 3 unreadable image(s) of 59" in caplog.text
    listed = (Path(cfg.paths.output_dir) / "bad_images.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == sorted(
        ["notes.png", "empty.jpg", "truncated.jpg"]
    )


def saved(image: Image.Image, fmt: str = "PNG", **kwargs) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    return buffer


def test_one_loader_converts_every_mode_to_8_bit_rgb():
    grey = load_rgb(saved(Image.new("L", (4, 3), 77)))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)

    # transparent pixels come out white, opaque ones as they are
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))
    loaded = load_rgb(saved(rgba))
    assert loaded.getpixel((0, 0)) == (10, 20, 30) and loaded.getpixel((1, 0)) == (255, 255, 255)

    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    assert load_rgb(saved(palette)).getpixel((1, 1)) == (200, 100, 50)

    cmyk = load_rgb(saved(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "JPEG", quality=100))
    red = np.asarray(cmyk)[0, 0]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15

    # 16-bit: the full range maps onto 0..255 (clipping would turn everything above 255 white)
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    assert np.asarray(load_rgb(saved(Image.fromarray(wide))))[0, :, 0].tolist() == [0, 100, 255]


def test_exif_rotation_is_applied():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    rotated = load_rgb(saved(wide, "JPEG", exif=exif))
    assert rotated.size == (20, 40)


def test_an_image_smaller_than_the_crop_is_resized_up(tiny_root, tmp_path):
    from src.data.folders import ImageFolderDataModule

    root = tmp_path / "small"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("manifest.json"))
    Image.new("RGB", (20, 30), (9, 9, 9)).save(root / "val" / "6.5" / "tiny.png")
    dm = ImageFolderDataModule(
        root=str(root), resize_size=72, crop_size=64, num_workers=0,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.setup("validate")
    val = dm.datasets["val"]
    square, _ = val[[Path(p).name for p, _ in val.samples].index("tiny.png")]
    assert square.shape == (3, 72, 72)
    assert dm.transform(square[None], "val").shape == (1, 3, 64, 64)
