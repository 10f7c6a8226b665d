"""Decode once: every image of a split resized to a square of ``resize_size`` and stored as uint8
pixels in a numpy memory-mapped file, so training reads slices instead of decoding JPEGs.

The paper did the same (section 2: every image down-sampled to 256 x 256 once). A split is an
``ImageSet``: a split folder's images, or the file list a flat folder's split gives it. A cache
folder holds ``images.npy`` (N, 3, S, S), ``labels.npy`` (N,) and ``index.json``; its name
carries a hash of the source files (relative paths, sizes, modification times), the resize size
and the format version, so any change of the data builds a new one. It is built in a temporary
folder and renamed into place, and ``index.json`` is written last: a folder without it is never
read.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.folders import ImageSet, as_image_set
from src.data.images import load_square, record_verdicts
from src.utils import usable_cpus

log = logging.getLogger(__name__)

# 2: squares resized by torchvision's uint8 kernel (1: by Pillow)
CACHE_VERSION = 2
INDEX = "index.json"
CHUNK = 1024


def cache_key(images: ImageSet, resize_size: int) -> str:
    """Changes whenever a file is added, removed, renamed, resized or touched, or the size or
    the format changes."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {resize_size}\n".encode())
    for path, _ in sorted(images.samples):
        stat = os.stat(path)
        relative = Path(path).relative_to(images.base).as_posix()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_folder(source: str | Path | ImageSet, cache_dir: str | Path, resize_size: int) -> Path:
    """Where the cache of a split folder or image set at ``resize_size`` lives, built or not."""
    images = as_image_set(source)
    key = cache_key(images, resize_size)
    return Path(cache_dir) / f"{images.name}-{resize_size}px-{key}"


def _decoded(path: str, resize_size: int) -> tuple[np.ndarray | None, str | None]:
    """The pixels, or what is wrong with the file: a broken file is a verdict, not a crash."""
    try:
        return load_square(path, resize_size), None
    except Exception as err:  # noqa: BLE001 - any decoder failure is a verdict on the file
        return None, f"{type(err).__name__}: {err}"


def _write(source: ImageSet, folder: Path, resize_size: int, verdicts_file: Path) -> dict[str, Any]:
    classes, samples = source.classes, source.samples
    shape = (len(samples), 3, resize_size, resize_size)
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, shape)
    paths = [path for path, _ in samples]
    problems: dict[Path, str | None] = {}
    # Threads: Pillow releases the interpreter lock while it decodes and resizes. Chunks keep
    # the queue of pending images short on a folder of millions.
    with ThreadPoolExecutor(max_workers=min(usable_cpus(), 16)) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            for row, (path, (pixels, problem)) in enumerate(
                zip(chunk, pool.map(_decoded, chunk, [resize_size] * len(chunk)), strict=True),
                start=start,
            ):
                problems[Path(path)] = problem
                if pixels is not None:
                    images[row] = pixels
    images.flush()
    del images
    np.save(folder / "labels.npy", np.array([label for _, label in samples], dtype=np.int64))
    # the build decoded every file: the check before training need not do it again
    record_verdicts(verdicts_file, problems)
    unreadable = [row for row, problem in enumerate(problems.values()) if problem is not None]
    return {
        "classes": classes, "count": len(samples), "resize_size": resize_size,
        "unreadable_rows": unreadable,
    }  # fmt: skip


def ensure_cache(
    source: str | Path | ImageSet, cache_dir: str | Path, resize_size: int, verdicts_file: Path
) -> Path:
    """The cache folder of a split folder or image set, built first if it does not exist yet;
    what the build finds about each file goes into ``verdicts_file`` (see ``src.data.images``)."""
    images = as_image_set(source)
    folder = cache_folder(images, cache_dir, resize_size)
    if (folder / INDEX).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    start = time.perf_counter()
    try:
        index = _write(images, tmp, resize_size, verdicts_file)
        index |= {"version": CACHE_VERSION, "source": str(images.base.resolve())}
        index["build_seconds"] = round(time.perf_counter() - start, 2)
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process (another node on a shared disk) finished the same cache first.
            if not (folder / INDEX).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in folder.iterdir())
    log.info(
        "Cached %d images of %s in %.1f s: %.1f MB in %s",
        index["count"], images.name, index["build_seconds"], size / 1e6, folder,
    )  # fmt: skip
    return folder


class CachedImages(Dataset):
    """A built cache as a data set of (uint8 (3, S, S) image, label); ``__getitems__`` returns a
    whole batch as two tensors, read with one slice of the memory map.

    The memory map opens lazily in each process that reads, so workers share the page cache and
    nothing is ever loaded whole.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / INDEX).is_file():
            raise FileNotFoundError(
                f"'{self.folder}' is not a finished image cache (no {INDEX}); it is built by the "
                "data module's prepare_data, which the Trainer runs before setup."
            )
        index = json.loads((self.folder / INDEX).read_text())
        self.classes: list[str] = index["classes"]
        # files that did not decode stay out (the run got here only with data.skip_bad_images)
        unreadable = set(index.get("unreadable_rows", []))
        labels = np.load(self.folder / "labels.npy")
        self.rows = np.array([r for r in range(len(labels)) if r not in unreadable], dtype=np.int64)
        self.labels = torch.from_numpy(labels[self.rows])
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        # Processes that start by pickling (spawn) map the file themselves.
        return self.__dict__ | {"_images": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[self.rows[i]])), int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices)
        return torch.from_numpy(self.images[self.rows[indices]]), self.labels[indices]


def as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's collate_fn for CachedImages: ``__getitems__`` already made the batch."""
    return batch
