"""Synthetic metallographic micrographs labelled by grain size number.

The dataset has to exist on every machine without a download, so it is rendered here,
deterministically, from a seed. Each image shows an etched polycrystal under an optical
microscope: a Voronoi tessellation of grains with dark boundaries, per-grain grey levels,
faint etching texture, scratches, vignetting and sensor noise.

The label is the grain size number G of the standard comparison charts, in half steps from
6.5 to 13.0. The number of grains per unit area is proportional to 2**(G - 1), so each half
step multiplies the grain count by sqrt(2). The field of view is fixed: an image holds the
same number of grains whatever its pixel size, so resizing an image never changes its class.
Everything except the grain count is drawn independently of the class, so grain density is
the only signal a model can learn.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from src.data.folders import ImageFolderDataModule
from src.utils import usable_cpus

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = tuple(f"{g / 2:.1f}" for g in range(13, 27))
GENERATOR_VERSION: int = 2

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST = "manifest.json"
_GENERATOR_TAG = "synthetic-micrographs"

# Mean number of grains in one field of view at G = 1. Chosen so that G = 6.5 shows about
# five grains (partial grains counting as half) and G = 13.0 about 450 grains, which at
# 128 px leaves grains about 6 px across: small, but with boundaries still resolvable.
GRAINS_AT_G1 = 5.0 / 2**5.5
# Per-image spread of the grain count (multiplicative, log-uniform). A half step in G is a
# factor sqrt(2) ~ 1.41, so +-8 % keeps neighbouring classes apart.
COUNT_JITTER = 0.08
JPEG_QUALITY = 95
RELAX_STEPS = 2
REPULSION_RANGE = 0.8
BOUNDARY_WIDTH = 1.4
_CANDIDATES = 10


def grains_per_field(grain_size: float) -> float:
    """Mean grain count in one image; the single place where the class enters rendering."""
    return GRAINS_AT_G1 * 2.0 ** (grain_size - 1.0)


def _seed_points(n_field: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Seeds over the image plus a margin, so grains run naturally across the borders."""
    spacing = size / math.sqrt(n_field)
    # One seed per square of side `spacing` (a jittered lattice with random phase): the
    # density is exact and, unlike fully random seeds, no tight clusters form, which would
    # render as fans of sliver grains. The squares reach at least 1.5 spacings beyond every
    # edge, further than the seed of any grain that shows in the image can lie.
    n_cells = int(math.ceil(size / spacing)) + 4
    origin = -1.5 * spacing - rng.uniform(0.0, spacing, size=2)
    cells = np.stack(np.meshgrid(np.arange(n_cells), np.arange(n_cells), indexing="ij"), -1)
    cells = cells.reshape(-1, 2).astype(np.float64)
    seeds = origin + spacing * (cells + rng.uniform(0.0, 1.0, size=cells.shape))

    # A few relaxation steps that push apart seeds closer than a typical spacing: real
    # grains are more equiaxed than a random tessellation, and the lattice disappears.
    for _ in range(RELAX_STEPS):
        dist, near = cKDTree(seeds).query(seeds, k=7)
        dist, near = dist[:, 1:], near[:, 1:]
        push = np.clip(REPULSION_RANGE * spacing - dist, 0.0, None) / np.maximum(dist, 1e-9)
        seeds += 0.5 * ((seeds[:, None, :] - seeds[near]) * push[..., None]).sum(axis=1)
    return seeds


def _nearest_two(
    seeds: np.ndarray, size: int, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Squared distances and indices of the two nearest seeds of every pixel centre.

    Rendering time is dominated by this search, so rather than one tree query per pixel,
    each tile of pixels asks the tree once for a short list of candidate seeds and the
    pixels pick their two nearest among those in bulk. A tile whose list may be too short
    is redone pixel by pixel, so the result matches a per-pixel search.
    """
    tile = max(2, int(spacing / 2))
    n_tiles = -(-size // tile)
    tree = cKDTree(seeds)
    tile_axis = (np.arange(n_tiles) + 0.5) * tile
    ty, tx = np.meshgrid(tile_axis, tile_axis, indexing="ij")
    n_cand = min(_CANDIDATES, len(seeds))
    cand_dist, cand = tree.query(np.column_stack([ty.ravel(), tx.ravel()]), k=n_cand)

    # Coordinates relative to the tile centre keep single precision accurate to well
    # under a thousandth of a pixel, and single precision halves the memory traffic.
    offsets = (np.arange(tile) + 0.5 - tile / 2).astype(np.float32)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    rel = (seeds[cand] - np.stack([ty, tx], axis=-1).reshape(-1, 1, 2)).astype(np.float32)
    sq = (oy.reshape(1, -1, 1) - rel[:, None, :, 0]) ** 2
    sq += (ox.reshape(1, -1, 1) - rel[:, None, :, 1]) ** 2
    flat = sq.reshape(-1, n_cand)  # (pixels in tile order, candidates)
    rows = np.arange(len(flat))
    first = flat.argmin(axis=1)
    sq1 = flat[rows, first]
    flat[rows, first] = np.inf
    second = flat.argmin(axis=1)
    sq2 = flat[rows, second]
    tile_of = rows // (tile * tile)
    idx1, idx2 = cand[tile_of, first], cand[tile_of, second]

    # A seed outside the list is at least cand_dist[-1] - r from any pixel of the tile
    # (r: half its diagonal), while the second nearest is at most cand_dist[1] + r away.
    unsafe = np.flatnonzero(cand_dist[:, -1] <= cand_dist[:, 1] + tile * math.sqrt(2))
    if unsafe.size:
        pix_y = ty.reshape(-1, 1)[unsafe] + oy.reshape(1, -1)
        pix_x = tx.reshape(-1, 1)[unsafe] + ox.reshape(1, -1)
        pix = np.column_stack([pix_y.ravel(), pix_x.ravel()])
        dist, idx = tree.query(pix, k=2)
        at = (unsafe[:, None] * tile * tile + np.arange(tile * tile)).ravel()
        sq1[at], sq2[at] = dist[:, 0] ** 2, dist[:, 1] ** 2
        idx1[at], idx2[at] = idx[:, 0], idx[:, 1]

    def to_image(values: np.ndarray) -> np.ndarray:
        grid = values.reshape(n_tiles, n_tiles, tile, tile).transpose(0, 2, 1, 3)
        return grid.reshape(n_tiles * tile, n_tiles * tile)[:size, :size]

    return to_image(sq1), to_image(sq2), to_image(idx1), to_image(idx2)


def _smooth_noise(size: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise varying slowly, over about `scale` px.

    Random values on a coarse lattice spread by separable Gaussian weights: two tiny matrix
    products instead of a wide convolution.
    """
    n_knots = int(math.ceil(size / scale)) + 3
    knots = (np.arange(n_knots) - 1.0) * scale
    coords = np.arange(size) + 0.5
    weights = np.exp(-0.5 * ((coords[:, None] - knots[None, :]) / (0.6 * scale)) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    field = weights @ rng.standard_normal((n_knots, n_knots)) @ weights.T
    return field / (field.std() + 1e-12)


def render_micrograph(grain_size: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 image of grain size number `grain_size`.

    All randomness comes from `rng`, so a seeded generator reproduces the image exactly.
    """
    n_field = grains_per_field(grain_size) * math.exp(rng.uniform(-COUNT_JITTER, COUNT_JITTER))
    spacing = size / math.sqrt(n_field)
    seeds = _seed_points(n_field, size, rng)
    n_seeds = len(seeds)

    # The distance to the bisector of the nearest and second-nearest seeds is the distance
    # to the grain boundary there, which gives boundaries of constant width with smooth
    # (anti-aliased) edges.
    sq1, sq2, owner, other = _nearest_two(seeds, size, spacing)
    seed_y, seed_x = seeds[:, 0].copy(), seeds[:, 1].copy()
    gap = np.hypot(seed_y[other] - seed_y[owner], seed_x[other] - seed_x[owner])
    to_boundary = (sq2 - sq1) / (2.0 * np.maximum(gap, 1e-9))
    # Darkness is the share of the pixel covered by a groove BOUNDARY_WIDTH px wide, so a
    # boundary looks equally strong whether it passes through pixel centres or between them.
    boundary = np.clip(0.5 + BOUNDARY_WIDTH / 2 - to_boundary, 0.0, 1.0)

    # Etching contrast differs from grain to grain (crystal orientation), with a faint
    # gradient across each grain: a plane per grain, level `shade` at its seed.
    centres = np.arange(size) + 0.5
    shade = rng.uniform(150.0, 230.0, size=n_seeds)
    tilt = rng.normal(0.0, 0.15 * 64.0 / size, size=(n_seeds, 2))
    level = shade - tilt[:, 0] * seed_y - tilt[:, 1] * seed_x
    grey = level[owner] + tilt[owner, 0] * centres[:, None] + tilt[owner, 1] * centres[None, :]

    # Etching texture: broad unevenness plus fine mottling, both independent of the class.
    grey += rng.uniform(3.0, 7.0) * _smooth_noise(size, size / 6.0, rng)
    mottle = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.2, truncate=3.0)
    grey += rng.uniform(1.0, 3.0) * mottle / (mottle.std() + 1e-12)

    # Polishing scratches: a few faint straight lines.
    for _ in range(rng.poisson(1.5)):
        angle = rng.uniform(0.0, math.pi)
        y0, x0 = rng.uniform(0.0, size, size=2)
        across_x, across_y = math.sin(angle), -math.cos(angle)
        offset = (centres[None, :] - x0) * across_x + (centres[:, None] - y0) * across_y
        grey -= rng.uniform(6.0, 14.0) * np.exp(-2.0 * offset**2)

    # Boundaries are grooves that reflect little light.
    grey *= 1.0 - rng.uniform(0.62, 0.72) * boundary

    # Illumination: a slightly off-centre vignette and a per-image exposure.
    cy, cx = size / 2 + rng.normal(0.0, size / 20, size=2)
    r2 = ((centres[:, None] - cy) ** 2 + (centres[None, :] - cx) ** 2) / (size / 2) ** 2
    grey *= rng.uniform(0.94, 1.04) * (1.0 - rng.uniform(0.06, 0.12) * r2)

    grey += rng.normal(0.0, 3.0, size=(size, size))

    tint = (np.array([1.0, 0.975, 0.93]) * rng.uniform(0.99, 1.01, size=3)).astype(np.float32)
    rgb = grey.astype(np.float32)[..., None] * tint
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _manifest(
    train_per_class: int, val_per_class: int, test_per_class: int, image_size: int, seed: int
) -> dict[str, Any]:
    return {
        "generator": _GENERATOR_TAG,
        "generator_version": GENERATOR_VERSION,
        "classes": list(CLASSES),
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "test_per_class": test_per_class,
        "image_size": image_size,
        "seed": seed,
    }


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest if it is one of ours; None for a foreign or unreadable file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("generator") == _GENERATOR_TAG:
        return data
    return None


def _write_class(
    folder: Path, name: str, split_id: int, class_idx: int, count: int, size: int, seed: int
) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        # One generator per image: splits never share a seed, and any image can be
        # reproduced alone, whatever order the tree is written in.
        rng = np.random.default_rng([seed, split_id, class_idx, i])
        image = render_micrograph(float(name), size, rng)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=JPEG_QUALITY)


def _write_tree(dest: Path, manifest: dict[str, Any]) -> None:
    size, seed = int(manifest["image_size"]), int(manifest["seed"])
    jobs = [
        (dest / split / name, name, split_id, class_idx, int(manifest[f"{split}_per_class"]))
        for split_id, split in enumerate(SPLITS)
        for class_idx, name in enumerate(CLASSES)
    ]
    # Threads, not processes: the heavy numpy, tree-search and JPEG work releases the
    # interpreter lock, and threads are safe inside a training process that already runs
    # its own threads. Every image has its own generator, so the output does not depend on
    # scheduling.
    with ThreadPoolExecutor(max_workers=min(usable_cpus(), 8)) as pool:
        futures = [pool.submit(_write_class, *job, size, seed) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # fail fast instead of finishing the queue
            raise
    # Written last: a tree with a matching manifest is complete.
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [f"{key} {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
    return ", ".join(changed) or "manifest differs"


def ensure_micrographs(
    root: str | Path,
    *,
    train_per_class: int,
    val_per_class: int,
    test_per_class: int,
    image_size: int,
    seed: int,
) -> Path:
    """Write an ImageFolder tree root/{train,val,test}/<class>/<nnnnn>.jpg once, reuse it after.

    The manifest marks a folder as made here and records what it was made from, so that a
    change of parameters or of the renderer regenerates the data instead of silently
    training on stale images, while a folder of the user's own files is never deleted.
    """
    root = Path(root)
    wanted = _manifest(train_per_class, val_per_class, test_per_class, image_size, seed)
    manifest_path = root / MANIFEST

    previous = _read_manifest(manifest_path) if manifest_path.is_file() else None
    if previous == wanted:
        return root
    if previous is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists and is not a micrograph folder made by this generator (no valid "
            f"{MANIFEST}); refusing to overwrite it. Point data.root elsewhere or remove the "
            "folder."
        )

    n_images = len(CLASSES) * (train_per_class + val_per_class + test_per_class)
    if previous is None:
        log.info("Generating %d synthetic micrographs in %s", n_images, root)
    else:
        log.info(
            "Regenerating synthetic micrographs in %s: %s", root, _describe_change(previous, wanted)
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_tree(tmp, wanted)
        if previous is None:
            if root.exists():
                root.rmdir()  # empty, checked above
            try:
                os.replace(tmp, root)
            except OSError:
                # Another process finished the same tree first; use theirs if it matches.
                if _read_manifest(manifest_path) == wanted:
                    return root
                raise
        else:
            # The old manifest stays until the new one replaces it, so an interruption here
            # leaves a folder that is still ours and still mismatched: the next call redoes it.
            for split in SPLITS:
                if (root / split).exists():
                    shutil.rmtree(root / split)
                os.replace(tmp / split, root / split)
            os.replace(tmp / MANIFEST, manifest_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


class MicrographDataModule(ImageFolderDataModule):
    """The built-in data set: synthetic grain micrographs in the 14 grain-size classes, generated
    under ``root`` on first use (by one process only) and reused afterwards."""

    def __init__(
        self,
        root: str = "data/micrographs",
        train_per_class: int = 100,
        val_per_class: int = 20,
        test_per_class: int = 20,
        image_size: int = 128,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.save_hyperparameters(logger=False)

    @property
    def classes(self) -> list[str]:
        # ImageFolder's label order (sorted folder names), known before the tree is generated
        return sorted(CLASSES)

    def prepare_data(self) -> None:
        hp = self.hparams
        ensure_micrographs(
            self.root,
            train_per_class=hp.train_per_class,
            val_per_class=hp.val_per_class,
            test_per_class=hp.test_per_class,
            image_size=hp.image_size,
            seed=hp.seed,
        )
        super().prepare_data()
