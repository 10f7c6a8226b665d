"""Memory under load: ``python -m bench.soak`` (``make soak``), not part of the tests.

Writes 20,000 small JPEGs in 14 classes into a temporary folder, times the check that decodes
every file before training (first run, then from its cache), and trains ``cnn4`` on them for
three epochs with ``data.num_workers=0`` and with more workers than cores, recording the resident
memory of the training processes at the end of every epoch. Writes ``bench/soak.md``.
"""

import argparse
import csv
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.images import find_bad_images, image_files
from src.experiments.results import RESULTS_DIR, write_results
from src.utils.provenance import provenance, this_command

log = logging.getLogger(__name__)
CLASSES = 14


def write_images(root: Path, n_train: int, n_val: int, size: int = 48, seed: int = 0) -> None:
    """Noise images tinted by class, as JPEGs: cheap to make, and each decodes like a photo."""
    rng = np.random.default_rng(seed)
    tints = rng.integers(0, 256, size=(CLASSES, 3))
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = i % CLASSES
            folder = root / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(0, 256, size=(size, size, 3))
            pixels = ((noise + tints[label]) // 2).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def train_epochs(
    root: Path, backend: str, workers: int, epochs: int, out: Path
) -> list[dict[str, float]]:
    """Train cnn4 at 32 px from the command line; the per-epoch memory rows of its CSV log."""
    run = out / f"{backend}_workers_{workers}"
    command = [
        sys.executable, "-m", "src.train", "model=cnn4", "data=imagefolder", f"data.root={root}",
        f"data.cache_dir={out / 'cache'}", "data.resize_size=32", "data.crop_size=32",
        f"data.backend={backend}", f"data.num_workers={workers}",
        f"trainer.max_epochs={epochs}", "test=false",
        "logger=csv", "callbacks.progress_bar=null", "callbacks.model_checkpoint=null",
        "+callbacks.resident_memory._target_=src.callbacks.ResidentMemory",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(run / "csv" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get("memory/rss_mb")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="bench/soak.md")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where soak.json is written"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    where = provenance(this_command(), {"images": args.images, "generator": "bench/jpegs.py"})
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "images"
        start = time.perf_counter()
        write_images(root, args.images, max(CLASSES, args.images // 14))
        log.info("wrote %d images in %.0f s", args.images, time.perf_counter() - start)

        files = image_files(root / "train")
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            bad = find_bad_images(files, tmp / "verdicts.json")
            timings.append(time.perf_counter() - start)
        assert not bad, bad

        rows = {
            (backend, w): train_epochs(root, backend, w, args.epochs, tmp)
            for backend in ("cache", "pil")
            for w in (0, cores + 1)
        }

    lines = [
        "# Memory under load",
        "",
        f"`python -m bench.soak --images {args.images} --epochs {args.epochs}` on "
        f"{cores} cores, torch {torch.__version__}: cnn4 at 32 px, batch 128, "
        f"{args.images:,} training JPEGs of 48 px.",
        "",
        f"Checking every training file before the first step: {timings[0]:.1f} s the first "
        f"time ({args.images / timings[0]:,.0f} images/s), {timings[1]:.2f} s from the cache.",
        "",
        "Memory of the training processes (main and loader workers; proportional set size, "
        "so pages they share count once) at the end of each epoch, MB; peak resident size of "
        "the main process:",
        "",
        "| data.backend | data.num_workers | "
        + " | ".join(f"epoch {e + 1}" for e in range(args.epochs))
        + " | growth first → last | peak |",
        "|---" * (args.epochs + 4) + "|",
    ]  # fmt: skip
    for (backend, workers), epochs in rows.items():
        rss = [float(r["memory/rss_mb"]) for r in epochs]
        cells = [backend, str(workers), *(f"{v:.0f}" for v in rss), f"{rss[-1] - rss[0]:+.0f}"]
        cells.append(f"{float(epochs[-1]['memory/peak_mb']):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    write_results(
        "soak", "\n".join(lines[lines.index("") + 1 :]), where, directory=args.results_dir
    )
    log.info("\n".join(lines))


if __name__ == "__main__":
    main()
