"""The synthetic micrograph generator: rendering, class signal, and the on-disk tree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from src.data import micrographs
from src.data.micrographs import (
    CLASSES,
    GENERATOR_VERSION,
    ensure_micrographs,
    render_micrograph,
)

TINY = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "image_size": 32, "seed": 3}


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_classes_are_the_half_steps_from_6_5_to_13() -> None:
    assert len(CLASSES) == 14
    assert CLASSES[0] == "6.5" and CLASSES[-1] == "13.0"
    assert [float(c) for c in CLASSES] == [6.5 + 0.5 * i for i in range(14)]


@pytest.mark.parametrize("size", [32, 37, 64])
def test_render_is_deterministic_uint8_rgb(size: int) -> None:
    a = render_micrograph(9.5, size, np.random.default_rng(11))
    b = render_micrograph(9.5, size, np.random.default_rng(11))
    c = render_micrograph(9.5, size, np.random.default_rng(12))
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _density(grain_size: float) -> tuple[float, float]:
    """Mean dark-pixel fraction and mean count of separate bright regions (grains)."""
    dark, grains = [], []
    for i in range(4):
        grey = render_micrograph(grain_size, 128, np.random.default_rng([5, i])).mean(axis=2)
        dark.append((grey < 110).mean())
        grains.append(ndimage.label(grey >= 110)[1])
    return float(np.mean(dark)), float(np.mean(grains))


def test_grain_density_increases_with_class() -> None:
    coarse, middle, fine = _density(6.5), _density(9.0), _density(13.0)
    assert coarse[0] < middle[0] < fine[0]
    assert coarse[1] < middle[1] < fine[1]
    # from 6.5 to 13.0 the grain count grows about 90-fold
    assert fine[1] > 20 * coarse[1]


def test_ensure_writes_the_tree_then_reuses_it(tmp_path: Path) -> None:
    root = tmp_path / "micro"
    assert ensure_micrographs(root, **TINY) == root

    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            images = sorted(p.name for p in (root / split / name).iterdir())
            assert images == [f"{i:05d}.jpg" for i in range(count)]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert {k: manifest[k] for k in TINY} == TINY
    assert [p.name for p in tmp_path.iterdir()] == ["micro"]  # no temporary folder left

    stamps = {k: p.stat().st_mtime_ns for k, p in _files(root).items()}
    ensure_micrographs(root, **TINY)
    assert {k: p.stat().st_mtime_ns for k, p in _files(root).items()} == stamps


def test_splits_do_not_share_images(tmp_path: Path) -> None:
    root = ensure_micrographs(tmp_path / "micro", **TINY)
    first = (root / "train" / "8.0" / "00000.jpg").read_bytes()
    assert first != (root / "val" / "8.0" / "00000.jpg").read_bytes()
    assert first != (root / "test" / "8.0" / "00000.jpg").read_bytes()


def test_changed_parameters_regenerate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = ensure_micrographs(tmp_path / "micro", **TINY)
    (root / "notes.txt").write_text("kept")
    with caplog.at_level(logging.INFO, logger=micrographs.__name__):
        ensure_micrographs(root, **{**TINY, "train_per_class": 3})
    assert [r.getMessage() for r in caplog.records if "Regenerating" in r.getMessage()]
    assert "train_per_class" in caplog.text
    assert len(list((root / "train" / "6.5").iterdir())) == 3
    assert json.loads((root / "manifest.json").read_text())["train_per_class"] == 3
    assert (root / "notes.txt").read_text() == "kept"  # only the generator's own folders go


def test_new_generator_version_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = ensure_micrographs(tmp_path / "micro", **TINY)
    monkeypatch.setattr(micrographs, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    ensure_micrographs(root, **TINY)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION + 1


def test_same_parameters_give_identical_files(tmp_path: Path) -> None:
    a = _files(ensure_micrographs(tmp_path / "a", **TINY))
    b = _files(ensure_micrographs(tmp_path / "b", **TINY))
    assert a.keys() == b.keys()
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    root = tmp_path / "micro"
    root.mkdir()
    ensure_micrographs(root, **TINY)
    assert (root / "manifest.json").is_file()


def test_foreign_folder_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    own = root / "train" / "photo.jpg"
    own.write_bytes(b"not ours")
    with pytest.raises(FileExistsError) as info:
        ensure_micrographs(root, **TINY)
    assert str(root) in str(info.value)
    assert "data.root" in str(info.value)
    assert own.read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
