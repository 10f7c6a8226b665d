"""The decode-once cache built straight from ImageNet's archives (``data=imagenet``) against the
same images as a folder (``data=imagefolder``): images/s of each build, side by side in one run,
and the bytes per image.

2,000 generated 500x375 JPEGs (``bench/jpegs.py``, about ImageNet's typical size) are packed in
the official layout: a training tar of 14 per-class tars, with a devkit. Each round builds both
caches from scratch at 256 px, in turn; the table gives the median over the rounds and the
ratio of each round's two rates.

``python -m bench.imagenet_build [--count N] [--rounds R]`` prints the table and writes it to
bench/imagenet_build.md. The writers of the archives serve ``tests/test_imagenet.py`` too.
"""

import argparse
import io
import logging
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from bench.jpegs import make_jpeg_tree
from src.data.cache import CachedImages, ensure_cache
from src.data.imagenet import ImageNetDataModule
from src.data.images import ImageSet
from src.experiments.results import write_results
from src.utils.provenance import provenance, this_command

log = logging.getLogger(__name__)
RESULTS = Path(__file__).with_name("imagenet_build.md")


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            add(tar, name, data)
    return buffer.getvalue()


def meta_mat(leaves: dict[int, str], words: dict[str, str], per_class: int) -> bytes:
    """meta.mat as the devkit has it: a (synsets, 1) struct array, the leaves first (IDs 1 ...),
    then synsets above them, one of which sorts before every leaf."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children"]
    fields += ["wordnet_height", "num_train_images"]
    rows = [
        (i, wnid, words.get(wnid, wnid), f"a {wnid}", 0, np.zeros((1, 0)), 0, per_class)
        for i, wnid in leaves.items()
    ]
    top = len(leaves) + 1
    rows += [
        (top, "n00000000", "fish", "a fish", 2, np.array([[2.0, 3.0]]), 1, 0),
        (top + 1, "n99999999", "entity", "anything", 2, np.array([[1.0, top]]), 2, 0),
    ]
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        for field, value in zip(fields, row, strict=True):
            synsets[r, 0][field] = float(value) if isinstance(value, int) else value
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


def write_archive_set(
    folder: Path, leaves: dict[int, str], train: dict[str, list[bytes]], val: dict[int, bytes],
    truth: list[int], words: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """The three archives: ``train`` JPEGs per wnid, ``val`` by image number (1, 2, ...),
    ``truth`` the ILSVRC2012_ID of each validation image."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as tar:
        for wnid, images in train.items():
            files = {f"{wnid}_{k}.JPEG": data for k, data in enumerate(images, start=1)}
            add(tar, f"{wnid}.tar", tar_bytes(files))
    files = {f"ILSVRC2012_val_{i:08d}.JPEG": data for i, data in val.items()}
    (folder / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(files))
    data = "ILSVRC2012_devkit_t12/data"
    per_class = max((len(images) for images in train.values()), default=0)
    devkit = {
        f"{data}/meta.mat": meta_mat(leaves, words or {}, per_class),
        f"{data}/ILSVRC2012_validation_ground_truth.txt": "".join(f"{i}\n" for i in truth).encode(),
        "ILSVRC2012_devkit_t12/COPYING": b"devkit\n",
    }
    (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(tar_bytes(devkit, "w:gz"))
    return folder


def tiny_rate(work: Path) -> float:
    """The build on a set the size of the tests' (3 classes of 3 images): mostly start-up."""
    images = {}
    for i, colour in enumerate(((220, 40, 40), (40, 220, 40), (40, 40, 220)), start=1):
        buffer = io.BytesIO()
        Image.new("RGB", (96, 72), colour).save(buffer, "JPEG", quality=90)
        images[f"n{i:08d}"] = [buffer.getvalue()] * 3
    leaves = {i: wnid for i, wnid in enumerate(images, start=1)}
    archives = write_archive_set(work / "archives", leaves, images, {}, [])
    start = time.perf_counter()
    built = ImageNetDataModule(
        root=str(archives), cache_dir=str(work / "cache"), resize_size=72, crop_size=64
    ).ensure_split_cache("train")
    return len(CachedImages(built)) / (time.perf_counter() - start)


def build_rates(work: Path, count: int, rounds: int) -> str:
    tree = make_jpeg_tree(work / "jpegs", {"train": count}) / "train"
    folders = sorted(tree.iterdir())
    leaves = {i: f"n{i:08d}" for i in range(1, len(folders) + 1)}
    train = {
        leaves[i]: [p.read_bytes() for p in sorted(folder.iterdir())]
        for i, folder in enumerate(folders, start=1)
    }
    archives = write_archive_set(work / "archives", leaves, train, {}, [])
    rates: dict[str, list[float]] = {"archives": [], "folder": []}
    bytes_per_image = 0.0
    for _ in range(rounds):
        shutil.rmtree(work / "cache", ignore_errors=True)
        start = time.perf_counter()
        built = ImageNetDataModule(
            root=str(archives), cache_dir=str(work / "cache"), resize_size=256, crop_size=224
        ).ensure_split_cache("train")
        rates["archives"].append(len(CachedImages(built)) / (time.perf_counter() - start))
        size = sum(p.stat().st_size for p in built.rglob("images.npy"))
        bytes_per_image = size / len(CachedImages(built))
        start = time.perf_counter()
        ensure_cache(ImageSet.of_folder(tree), work / "cache", 256, work / "cache" / "verdicts")
        rates["folder"].append(count / (time.perf_counter() - start))
    tiny = tiny_rate(work / "tiny")
    ratios = [a / f for a, f in zip(rates["archives"], rates["folder"], strict=True)]
    median = {name: statistics.median(values) for name, values in rates.items()}
    return "\n".join([
        f"| cache build, {count} JPEGs of 500x375 at 256 px, {rounds} rounds | images/s (median) "
        "| × folder (per round) |",
        "|---|---:|---:|",
        f"| `data=imagenet`: from the training tar of per-class tars | {median['archives']:.0f} "
        f"| **{statistics.median(ratios):.2f}** ({min(ratios):.2f}–{max(ratios):.2f}) |",
        f"| `data=imagefolder`: the same JPEGs as files | {median['folder']:.0f} | 1.00 |",
        f"| the tests' tiny set: 9 solid-colour JPEGs of 96x72 at 72 px | {tiny:.0f} | |",
        "",
        f"Bytes per image in the archives' cache: {bytes_per_image:,.0f} (3 × 256² = 196,608).",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    where = provenance(this_command(), {"images": args.count, "generator": "bench/jpegs.py"})
    with tempfile.TemporaryDirectory() as work:
        table = build_rates(Path(work), args.count, args.rounds)
    write_results("imagenet_build", table, where)
    RESULTS.write_text(
        "# ImageNet's cache build\n\n`python -m bench.imagenet_build` on this project's 2-core "
        f"CPU:\n\n{table}\n"
    )
    log.info("\n%s\n(written to %s)", table, RESULTS)


if __name__ == "__main__":
    main()
