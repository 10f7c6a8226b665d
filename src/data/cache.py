"""Decode once: every image of a split resized to a square of ``resize_size`` and stored as uint8
pixels in a numpy memory-mapped file, so training reads slices instead of decoding JPEGs.

The paper did the same (section 2: every image down-sampled to 256 x 256 once). A split is an
``ImageSet``: a split folder's images, or the file list a flat folder's split gives it. A cache
folder holds ``images.npy`` (N, 3, S, S), ``labels.npy`` (N,) and ``index.json``; its name
carries a hash of the source files (relative paths, sizes, modification times), the resize size
and the format version, so any change of the data builds a new one. It is built in a temporary
folder and renamed into place, and ``index.json`` is written last: a folder without it is never
read.

A source read as a stream (ImageNet's tar archives, ``src/data/imagenet.py``) is built by
``ensure_chunked_cache`` instead: one sub-folder of ``chunks/`` per part of the source, each
built in a temporary folder and renamed into place when complete, so a rerun after a kill skips
the finished ones; ``index.json`` again comes last, and ``CachedImages`` reads the chunks as one
array.
"""

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.images import ImageSet, as_image_set, load_square, record_verdicts, relative_to
from src.utils import UserError, usable_cpus
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

# 2: squares resized by torchvision's uint8 kernel (1: by Pillow)
CACHE_VERSION = 2
INDEX = "index.json"
CHUNK = 1024
# a chunked cache: one folder per part under chunks/, finished when its chunk.json is there
CHUNKS = "chunks"
CHUNK_INDEX = "chunk.json"
TMP = ".tmp-"
# images read ahead of the decoders: enough to keep every thread busy, few enough to bound memory
WINDOW = 64
LOG_SECONDS = 30.0


def cache_key(images: ImageSet, resize_size: int) -> str:
    """Changes whenever a file is added, removed, renamed, resized or touched, or the size or
    the format changes."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} {resize_size}\n".encode())
    for path, _ in sorted(images.samples):
        stat = os.stat(path)
        relative = relative_to(path, images.base)
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


@dataclass(frozen=True)
class Chunk:
    """One part of a source read as a stream, built on its own: a rerun after a kill skips the
    parts already built. ``items`` lists its images when it is built, each as (name, label, a
    reader of its encoded bytes); ``size`` is the bytes it reads, for the estimate of time left.
    """

    name: str
    size: int
    items: Callable[[], list[tuple[str, int, Callable[[], bytes]]]]


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


class _Progress:
    """A log line every ``LOG_SECONDS`` and at the end: chunks, images/s and the time left,
    estimated from the bytes still to read."""

    def __init__(self, name: str, chunks: int, total_bytes: int) -> None:
        self.name, self.chunks, self.total = name, chunks, max(total_bytes, 1)
        self.done = self.images = self.bytes = 0
        self.start = self.last = time.perf_counter()

    def update(self, images: int, size: int) -> None:
        self.done, self.images, self.bytes = self.done + 1, self.images + images, self.bytes + size
        now = time.perf_counter()
        if now - self.last < LOG_SECONDS and self.done < self.chunks:
            return
        self.last, elapsed = now, max(now - self.start, 1e-9)
        left = elapsed * (self.total - self.bytes) / max(self.bytes, 1)
        log.info(
            "%s: %d/%d chunks, %d images, %.0f images/s, %.1f of %.1f GB read, %s left",
            self.name, self.done, self.chunks, self.images, self.images / elapsed,
            self.bytes / 1e9, self.total / 1e9, _duration(left),
        )  # fmt: skip


def _remove_stale(parts: Path) -> None:
    """Temporary chunks of killed builds on this machine: a live process's are left alone (it
    may be another node's build on a shared disk, or this machine's other run)."""
    host = socket.gethostname()
    for tmp in parts.glob(f"{TMP}{host}-*"):
        pid = tmp.name.removeprefix(f"{TMP}{host}-").split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _reserve(path: Path, cache_dir: Path) -> None:
    """Claim the memory map's disk space now: a full disk then fails here with a message, not
    with SIGBUS when a page of the map is written back."""
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise UserError(
                f"No space left on the disk of data.cache_dir='{cache_dir}' for {path.name} "
                f"({path.stat().st_size / 1e9:.1f} GB). Free space or point data.cache_dir at a "
                "larger disk; the chunks built so far are kept and the next run resumes."
            ) from None
        # a file system without fallocate: the map is written as before


def _store(job: tuple[int, str, Future], images: np.ndarray, problems: list) -> None:
    row, name, future = job
    pixels, problem = future.result()
    if problem is None:
        images[row] = pixels
    else:
        problems.append([row, name, problem])


def _build_chunk(chunk: Chunk, parts: Path, resize_size: int, pool: ThreadPoolExecutor) -> int:
    """Decode one chunk into a temporary folder and rename it into place; returns its count."""
    start = time.perf_counter()
    tmp = parts / f"{TMP}{socket.gethostname()}-{os.getpid()}-{chunk.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        items = chunk.items()
        shape = (len(items), 3, resize_size, resize_size)
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        _reserve(tmp / "images.npy", parts.parent.parent)
        problems: list[list] = []
        pending: deque[tuple[int, str, Future]] = deque()
        # reads in this thread (a tar is read in order), decodes in the pool's
        for row, (name, _, read) in enumerate(items):
            pending.append((row, name, pool.submit(_decoded, io.BytesIO(read()), resize_size)))
            if len(pending) > WINDOW:
                _store(pending.popleft(), images, problems)
        while pending:
            _store(pending.popleft(), images, problems)
        images.flush()
        del images
        np.save(tmp / "labels.npy", np.array([label for _, label, _ in items], dtype=np.int64))
        seconds = round(time.perf_counter() - start, 2)
        record = {"count": len(items), "unreadable": problems, "seconds": seconds}
        (tmp / CHUNK_INDEX).write_text(json.dumps(record) + "\n")
        try:
            os.replace(tmp, parts / chunk.name)
        except OSError:
            # another process (another node on a shared disk) finished the same chunk first
            if not (parts / chunk.name / CHUNK_INDEX).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(items)


def ensure_chunked_cache(
    folder: Path, chunks: Sequence[Chunk], resize_size: int, info: dict[str, Any]
) -> Path:
    """The cache ``folder`` of a source read as a stream, built chunk by chunk where it is not
    finished: chunks finished by an earlier, killed run are kept and skipped. ``info`` (the
    classes, the source) goes into its index; unreadable images are recorded there by name."""
    if (folder / INDEX).is_file():
        return folder
    parts = folder / CHUNKS
    parts.mkdir(parents=True, exist_ok=True)
    _remove_stale(parts)
    todo = [chunk for chunk in chunks if not (parts / chunk.name / CHUNK_INDEX).is_file()]
    if len(todo) < len(chunks):
        log.info(
            "Resuming %s: %d of %d chunks already built, skipped",
            folder.name, len(chunks) - len(todo), len(chunks),
        )  # fmt: skip
    progress = _Progress(folder.name, len(todo), sum(chunk.size for chunk in todo))
    with ThreadPoolExecutor(max_workers=min(usable_cpus(), 16)) as pool:
        for chunk in todo:
            progress.update(_build_chunk(chunk, parts, resize_size, pool), chunk.size)
    counts, labels, rows, problems, count, seconds = [], [], [], {}, 0, 0.0
    for chunk in chunks:
        record = json.loads((parts / chunk.name / CHUNK_INDEX).read_text())
        for row, name, problem in record["unreadable"]:
            rows.append(count + row)
            problems[name] = problem
        counts.append((chunk.name, record["count"]))
        labels.append(np.load(parts / chunk.name / "labels.npy"))
        count, seconds = count + record["count"], seconds + record["seconds"]
    np.save(folder / "labels.npy", np.concatenate(labels) if labels else np.zeros(0, np.int64))
    index = info | {
        "count": count, "resize_size": resize_size, "version": CACHE_VERSION, "chunks": counts,
        "unreadable_rows": rows, "unreadable": problems, "build_seconds": round(seconds, 2),
    }  # fmt: skip
    atomic_write(folder / INDEX, json.dumps(index, indent=2) + "\n")
    log.info(
        "Cached %d images in %s (%.1f GB, %.0f s of decoding)",
        index["count"], folder, index["count"] * 3 * resize_size**2 / 1e9, seconds,
    )  # fmt: skip
    return folder


class ChunkedRows:
    """The images of a chunked cache as one (N, 3, S, S) array that can be indexed by a row or
    an array of rows, so ``CachedImages`` reads both layouts alike."""

    def __init__(self, folder: Path, counts: Sequence[tuple[str, int]]) -> None:
        self.parts = [
            np.load(folder / CHUNKS / name / "images.npy", mmap_mode="r") for name, _ in counts
        ]
        self.starts = np.cumsum([0, *(count for _, count in counts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows: int | np.ndarray) -> np.ndarray:
        if np.ndim(rows) == 0:
            part = int(np.searchsorted(self.starts, rows, "right")) - 1
            return self.parts[part][int(rows) - self.starts[part]]
        rows = np.asarray(rows)
        which = np.searchsorted(self.starts, rows, "right") - 1
        out = np.empty((len(rows), *self.parts[0].shape[1:]), np.uint8)
        for part in np.unique(which):
            mask = which == part
            out[mask] = self.parts[part][rows[mask] - self.starts[part]]
        return out


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
        self.chunks: list[tuple[str, int]] | None = index.get("chunks")
        self._images: np.ndarray | ChunkedRows | None = None

    @property
    def images(self) -> np.ndarray | ChunkedRows:
        if self._images is None and self.chunks is not None:
            self._images = ChunkedRows(self.folder, self.chunks)
        elif self._images is None:
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
