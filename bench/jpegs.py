"""The benchmarks' photographs: 500x375 JPEGs in 14 class folders, made once per folder."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_SIZE = (500, 375)
CLASSES = 14


def make_jpeg_tree(root: Path, counts: dict[str, int]) -> Path:
    """``counts[split]`` JPEGs under ``root/<split>/class_NN``, the classes taken in turn, made
    once: smooth colour fields with fine noise, which decode at about the speed of photographs.
    One generator runs through the splits in order, so the same counts give the same files."""
    done = root / "done.json"
    if done.is_file() and json.loads(done.read_text()) == counts:
        return root
    rng = np.random.default_rng(0)
    i = 0
    for split, count in counts.items():
        for _ in range(count):
            folder = root / split / f"class_{i % CLASSES:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            smooth = np.asarray(coarse.resize(JPEG_SIZE, Image.BICUBIC), dtype=np.int16)
            noisy = smooth + rng.integers(-12, 13, smooth.shape, dtype=np.int16)
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            image.save(folder / f"{i:05d}.jpg", quality=90)
            i += 1
    done.write_text(json.dumps(counts))
    return root
