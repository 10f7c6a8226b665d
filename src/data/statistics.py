"""Training-set pixel statistics for the paper's mean image (section 2) and PCA colour noise
(section 4.1), from a seeded sample of the training split (a folder or a flat folder's file
list), computed once per data set and resize size and kept as an .npz under ``cache_dir``.

Both input paths see the same pixels: the squares of ``load_square``, read from the decode-once
cache where it was built (identical pixels, no second decode). A data set that exists only as a
cache (ImageNet's archives) is measured from its rows with ``cached_statistics``.
"""

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from src.data.cache import INDEX, CachedImages, cache_folder, cache_key
from src.data.images import ImageSet, as_image_set, load_square
from src.utils import usable_cpus
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

# Enough images for a stable mean image and 3x3 covariance; a fixed seed so both backends and
# every run pick the same files.
SAMPLE_SIZE = 4000
SAMPLE_SEED = 0
CHUNK = 256
STATISTICS_VERSION = 2  # 2: of the squares of CACHE_VERSION 2
KEYS = ("mean_image", "eigvals", "eigvecs")


def sample(count: int) -> np.ndarray:
    """Up to ``SAMPLE_SIZE`` of ``count`` positions, sorted: the same ones in every run."""
    picked = np.random.default_rng(SAMPLE_SEED).choice(
        count, min(SAMPLE_SIZE, count), replace=False
    )
    return np.sort(picked)


def sample_rows(samples: list[tuple[str, int]], unreadable: set[str]) -> list[int]:
    """Indices (in ImageFolder's order) of up to ``SAMPLE_SIZE`` readable files, sorted."""
    readable = [i for i, (path, _) in enumerate(samples) if path not in unreadable]
    return [readable[i] for i in sample(len(readable))]


def pixel_statistics(chunks: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Mean image and the eigen-decomposition of the RGB covariance (0-1 scale) of uint8
    (n, 3, S, S) chunks, accumulated in float64 so no more than one chunk is held."""
    image_sum, pixel_sum, outer_sum, images = None, np.zeros(3), np.zeros((3, 3)), 0
    for chunk in chunks:
        x = chunk.astype(np.float64) / 255
        image_sum = x.sum(0) if image_sum is None else image_sum + x.sum(0)
        pixels = x.transpose(1, 0, 2, 3).reshape(3, -1)
        pixel_sum += pixels.sum(1)
        outer_sum += pixels @ pixels.T
        images += len(x)
    if not images:
        raise ValueError("no readable training images to compute pixel statistics from")
    count = images * image_sum[0].size
    mean = pixel_sum / count
    covariance = outer_sum / count - np.outer(mean, mean)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    return {"mean_image": image_sum / images, "eigvals": eigvals, "eigvecs": eigvecs}


def statistics_file(train: ImageSet, cache_dir: str | Path, resize_size: int) -> Path:
    key = cache_key(train, resize_size)
    name = f"{train.name}-{resize_size}px-{key}-v{STATISTICS_VERSION}"
    return Path(cache_dir) / "statistics" / f"{name}.npz"


def _chunks(
    train: ImageSet, rows: list[int], cache_dir: str | Path, resize_size: int
) -> Iterator[np.ndarray]:
    folder = cache_folder(train, cache_dir, resize_size)
    if (folder / INDEX).is_file():
        log.info("Pixel statistics from %d cached images of %s", len(rows), folder)
        images = np.load(folder / "images.npy", mmap_mode="r")
        for start in range(0, len(rows), CHUNK):
            yield np.asarray(images[rows[start : start + CHUNK]])
        return
    log.info("Pixel statistics from %d images of %s (decoding each)", len(rows), train.name)
    with ThreadPoolExecutor(max_workers=min(usable_cpus(), 16)) as pool:
        for start in range(0, len(rows), CHUNK):
            chunk = [train.samples[row][0] for row in rows[start : start + CHUNK]]
            yield np.stack(list(pool.map(load_square, chunk, [resize_size] * len(chunk))))


def _load_or_measure(
    path: Path, measure: Callable[[], dict[str, np.ndarray]]
) -> dict[str, torch.Tensor]:
    if path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            stats = {k: saved[k] for k in KEYS}
        log.info("Pixel statistics loaded from %s", path)
    else:
        stats = measure()
        buffer = io.BytesIO()
        np.savez(buffer, **stats)
        atomic_write(path, buffer.getvalue())
        log.info("Pixel statistics saved to %s", path)
    return {k: torch.from_numpy(v) for k, v in stats.items()}


def training_statistics(
    source: str | Path | ImageSet, cache_dir: str | Path, resize_size: int, unreadable: set[str]
) -> dict[str, torch.Tensor]:
    """The statistics of the training folder or image set at ``resize_size``: loaded from
    ``cache_dir`` when this exact data set (file names, sizes, times) was measured before, else
    computed and saved."""
    train = as_image_set(source)

    def measure() -> dict[str, np.ndarray]:
        rows = sample_rows(train.samples, unreadable)
        return pixel_statistics(_chunks(train, rows, cache_dir, resize_size))

    return _load_or_measure(statistics_file(train, cache_dir, resize_size), measure)


def cached_statistics(folder: str | Path, cache_dir: str | Path) -> dict[str, torch.Tensor]:
    """The statistics of a built training cache, from the same number of rows, drawn the same
    way, as a folder's: for data read only through their cache. Kept under ``cache_dir`` by the
    cache folder's name, which changes with the data."""
    folder = Path(folder)

    def measure() -> dict[str, np.ndarray]:
        cached = CachedImages(folder)  # its rows leave out unreadable images
        rows = cached.rows[sample(len(cached.rows))]
        log.info("Pixel statistics from %d cached images of %s", len(rows), folder)
        chunks = (cached.images[rows[i : i + CHUNK]] for i in range(0, len(rows), CHUNK))
        return pixel_statistics(np.asarray(chunk) for chunk in chunks)

    path = Path(cache_dir) / "statistics" / f"{folder.name}-v{STATISTICS_VERSION}.npz"
    return _load_or_measure(path, measure)


def pca_offsets(
    count: int, eigvals: torch.Tensor, eigvecs: torch.Tensor, sigma: float
) -> torch.Tensor:
    """(count, 3) RGB offsets on the 0-1 scale, ``eigvecs @ (alpha * eigvals)`` with alpha drawn
    from N(0, sigma) per image and eigenvector by torch's default generator, which the run's seed
    sets and checkpoints carry."""
    alpha = torch.randn(count, 3, dtype=torch.float64) * sigma
    return ((alpha * eigvals.double()) @ eigvecs.double().T).float()


def pixel_mean_image(mean_image: torch.Tensor) -> torch.Tensor:
    """The mean image at the 0-255 scale, as both input paths subtract it."""
    return (mean_image.double() * 255).float()
