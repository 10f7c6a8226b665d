"""The paper's mean image (section 2) and PCA colour noise (section 4.1) on both input paths."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data import statistics
from src.data.cache import ensure_cache
from src.data.cifar10 import CIFAR10DataModule
from src.data.folders import ImageFolderDataModule
from src.data.images import ImageSet, load_square
from src.data.statistics import pca_offsets, sample_rows, training_statistics
from src.eval import evaluate
from src.predict import predict
from src.train import train
from src.utils import ConfigError
from tests.conftest import compose_config

STD = (0.2, 0.25, 0.3)


def synthetic_statistics(size: int) -> dict[str, torch.Tensor]:
    """A mean image of one colour (every crop sees the same) and an orthonormal basis with
    distinct eigenvalues."""
    torch.manual_seed(1)
    eigvecs, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    return {
        "mean_image": torch.rand(3, 1, 1, dtype=torch.float64).expand(3, size, size),
        "eigvals": torch.tensor([0.002, 0.01, 0.05], dtype=torch.float64),
        "eigvecs": eigvecs,
    }


def expected_covariance(stats: dict[str, torch.Tensor], sigma: float) -> torch.Tensor:
    """Cov(eigvecs (alpha * eigvals)) = eigvecs diag(sigma^2 eigvals^2) eigvecs^T."""
    p, lam = stats["eigvecs"], stats["eigvals"]
    return p @ torch.diag(sigma**2 * lam**2) @ p.T


def test_pca_offsets_have_the_papers_covariance():
    stats = synthetic_statistics(2)
    torch.manual_seed(0)
    offsets = pca_offsets(200_000, stats["eigvals"], stats["eigvecs"], 0.1).double()
    assert offsets.shape == (200_000, 3)
    expected = expected_covariance(stats, 0.1)
    # the variance of a variance estimate over n draws is about 2 var^2 / n: 1 % at 200,000
    assert torch.allclose(offsets.T.cov(correction=0), expected, atol=0.02 * expected.max())
    assert offsets.mean(0).abs().max() < 0.01 * expected.max().sqrt()


def test_statistics_of_a_folder_are_measured_once_and_cached_outside_the_data(
    tiny_root, tmp_path, monkeypatch
):
    train_dir = tiny_root / "train"
    samples = ImageSet.of_folder(train_dir).samples
    assert len(samples) <= statistics.SAMPLE_SIZE  # every image is in the sample
    pixels = np.stack([load_square(p, 72) for p, _ in samples]).astype(np.float64) / 255
    covariance = np.cov(pixels.transpose(1, 0, 2, 3).reshape(3, -1), bias=True)

    stats = training_statistics(train_dir, tmp_path / "decoded", 72, set())
    assert np.allclose(stats["mean_image"].numpy(), pixels.mean(0))
    eigvals, eigvecs = stats["eigvals"].numpy(), stats["eigvecs"].numpy()
    assert np.allclose(eigvals, np.linalg.eigvalsh(covariance))
    assert np.allclose(eigvecs @ np.diag(eigvals) @ eigvecs.T, covariance)
    (saved,) = (tmp_path / "decoded" / "statistics").glob("*.npz")
    assert not list(tiny_root.rglob("*.npz"))

    # from the decode-once cache's rows: the same pixels, so the same statistics
    ensure_cache(train_dir, tmp_path / "cached", 72, tmp_path / "verdicts.json")
    from_cache = training_statistics(train_dir, tmp_path / "cached", 72, set())
    assert all(torch.allclose(from_cache[k], stats[k]) for k in statistics.KEYS)

    def measure(*_):
        raise AssertionError("measured again")

    monkeypatch.setattr(statistics, "pixel_statistics", measure)
    again = training_statistics(train_dir, tmp_path / "decoded", 72, set())
    assert all(torch.equal(again[k], stats[k]) for k in statistics.KEYS)
    # unreadable files are never sampled
    assert 0 not in sample_rows(samples, {samples[0][0]})
    assert saved.is_file()


def noise_module(root: Path, input_scale: str, pca_noise: float) -> ImageFolderDataModule:
    noise = {"_target_": "src.data.augment.PCANoise", "std": pca_noise}
    dm = ImageFolderDataModule(
        root=str(root), resize_size=8, crop_size=6, std=STD, input_scale=input_scale,
        augment={"pca_noise": noise} if pca_noise else None, num_workers=0,
    )  # fmt: skip
    dm.statistics = synthetic_statistics(8)
    return dm


def train_and_val(dm: ImageFolderDataModule, count: int) -> tuple:
    """Training and validation inputs of ``count`` copies of one constant-colour square."""
    transform = dm.make_transform()
    images = torch.full((count, 3, 8, 8), 100, dtype=torch.uint8)
    return transform(images, "train"), transform(images, "val")


@pytest.mark.parametrize("input_scale", ["standardised", "raw", "mean_image"])
def test_pca_noise_shifts_each_image_by_its_own_offset(tiny_root, input_scale):
    dm = noise_module(tiny_root, input_scale, 0.1)
    torch.manual_seed(0)
    noisy, clean = train_and_val(dm, 3000)
    shift = noisy - clean
    offsets = shift[:, :, 0, 0].double()
    assert torch.allclose(shift, offsets[:, :, None, None].float().expand_as(shift), atol=1e-4)
    scale = 1 / torch.tensor(STD) if input_scale == "standardised" else torch.full((3,), 255.0)
    expected = expected_covariance(dm.statistics, 0.1) * torch.outer(scale, scale).double()
    assert torch.allclose(offsets.T.cov(), expected, atol=0.1 * expected.max())
    assert len(offsets.unique(dim=0)) == len(offsets)  # per image
    again, _ = train_and_val(dm, 2)
    assert not torch.equal(again, noisy[:2])  # and per draw

    off = noise_module(tiny_root, input_scale, 0.0)
    noisy, clean = train_and_val(off, 2)
    assert torch.equal(noisy, clean)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_mean_image_is_subtracted_before_cropping_alike_on_both_paths(
    tiny_root, tmp_path, ten_crop
):
    """Statistics measured separately by each path (decoded vs. cache rows), then compared."""
    common = {"resize_size": 72, "crop_size": 64, "input_scale": "mean_image", "num_workers": 0}
    modules = {
        backend: ImageFolderDataModule(
            root=str(tiny_root), backend=backend, cache_dir=str(tmp_path / backend),
            ten_crop=ten_crop, batch_size=4, **common,
        )
        for backend in ("pil", "cache")
    }  # fmt: skip
    for dm in modules.values():
        dm.prepare_data()
        dm.setup("test")
    pil, cache = modules["pil"], modules["cache"]
    assert torch.allclose(pil.statistics["mean_image"], cache.statistics["mean_image"])
    images, _ = next(iter(cache.test_dataloader()))
    from_cache = cache.transform(images, "test", ten_crop)
    from_pil = pil.transform(next(iter(pil.test_dataloader()))[0], "test", ten_crop)
    assert torch.allclose(from_pil, from_cache, atol=1e-4)
    # the centre crop of (image - mean image), not (crop - mean image's corner)
    mean = statistics.pixel_mean_image(pil.statistics["mean_image"])
    centre = images[0].float() - mean
    crop = from_cache[0, 4] if ten_crop else from_cache[0]
    assert torch.allclose(crop, centre[:, 4:68, 4:68], atol=1e-4)


@pytest.mark.parametrize("backend", ["pil", "cache"])
def test_mean_image_and_pca_noise_train_evaluate_and_predict_from_the_checkpoint(
    tiny_root, tmp_path, train_config, backend
):
    cache_dir = tmp_path / "cache"
    cfg = train_config(
        "data.input_scale=mean_image", "+data/augment=pca_noise", f"data.backend={backend}",
        f"data.cache_dir={cache_dir}",
    )  # fmt: skip
    metrics = train(cfg)
    assert (cache_dir / "statistics").is_dir()
    best = next((Path(cfg.paths.output_dir) / "checkpoints").glob("epoch_*.ckpt"))
    state = torch.load(best, weights_only=True)["MicrographDataModule"]
    assert state["mean_image"].shape == (3, 72, 72)

    shutil.rmtree(cache_dir)
    eval_cfg = compose_config("eval", [f"ckpt_path={best}", "trainer.accelerator=cpu"], tmp_path)
    results = evaluate(eval_cfg)
    assert results["test/acc"] == pytest.approx(metrics["test/acc"])
    image = next((tiny_root / "val" / "8.0").iterdir())
    pcfg = compose_config("predict", [f"ckpt_path={best}", f"image={image}"], tmp_path / "p")
    (result,) = predict(pcfg)
    assert len(result["top"]) == 5
    assert not (cache_dir / "statistics").exists()  # never measured from evaluation's data


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True, "high"])
def test_bad_pca_noise_is_named(tiny_root, value):
    noise = {"pca_noise": {"_target_": "src.data.augment.PCANoise", "std": value}}
    with pytest.raises(ConfigError, match="data.augment.pca_noise: std="):
        ImageFolderDataModule(root=str(tiny_root), augment=noise).operations()


def test_cifar10_measures_every_training_image_at_its_resize_size(tmp_path):
    from tests.test_cifar10 import write_cifar10

    root = write_cifar10(tmp_path / "cifar10")
    dm = CIFAR10DataModule(
        root=str(root),
        augment={"pca_noise": {"_target_": "src.data.augment.PCANoise"}},
        resize_size=40,
        crop_size=32,
        num_workers=0,
    )
    dm.setup("fit")
    train = dm.datasets["train"]
    squares = np.stack([train[i][0].numpy() for i in range(len(train))])
    expected = statistics.pixel_statistics([squares])
    assert np.allclose(dm.statistics["mean_image"].numpy(), expected["mean_image"])
    # the same covariance (eigenvectors are defined up to sign)
    vals, vecs = dm.statistics["eigvals"].numpy(), dm.statistics["eigvecs"].numpy()
    covariance = expected["eigvecs"] @ np.diag(expected["eigvals"]) @ expected["eigvecs"].T
    assert np.allclose(vecs @ np.diag(vals) @ vecs.T, covariance)
