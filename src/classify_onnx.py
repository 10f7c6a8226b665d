"""Classify images with model.onnx and preprocessing.json from this folder, using onnxruntime,
numpy and Pillow alone (no PyTorch): python classify.py IMAGE_OR_FOLDER [...] [--csv FILE]
[--top-k 5] [--batch-size 32] [--ten-crop]. One CSV row per image: its path (relative to a
folder given), top-1 class and probability, the top-k classes and probabilities, and the error
of a file that could not be read."""

import argparse
import csv
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
SPEC = json.loads((HERE / "preprocessing.json").read_text())
MEAN_IMAGE = np.load(HERE / SPEC["mean_image"]) if SPEC["mean_image"] else None
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_rgb(path):
    """The file as 8-bit RGB (step 1): src.data.images.load_rgb's rules, restated because this
    script runs where neither this package nor PyTorch is installed."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in WIDE_GREY:
            wide = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((wide.clip(0, 65535) / 257).round().astype(np.uint8), "L")
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("RGBA", "LA", "PA"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def centre(x, size):
    """The centre size x size of a (..., H, W) array."""
    height, width = x.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def normalise(x):
    """A float32 crop as the network takes it."""
    if SPEC["normalise"] is None:
        return x
    mean = np.float32(SPEC["normalise"]["mean"])[:, None, None]
    std = np.float32(SPEC["normalise"]["std"])[:, None, None]
    return (x * np.float32(1 / 255) - mean) / std


def preprocess(path, ten_crop=False):
    """float32 (crops, 3, crop, crop): the steps of preprocessing.json for one file."""
    image, size, crop = load_rgb(path), SPEC["resize_size"], SPEC["crop_size"]
    width, height = image.size
    short, long = sorted((width, height))
    scaled = (size, int(size * long / short))
    resized = scaled if width <= height else scaled[::-1]
    if resized != (width, height):
        image = image.resize(resized, Image.BILINEAR)
    x = centre(np.asarray(image).transpose(2, 0, 1), size).astype(np.float32)
    if MEAN_IMAGE is not None:
        x = x - MEAN_IMAGE
    if not ten_crop:
        return normalise(centre(x, crop))[None]
    crops = []
    for square in (x, x[..., ::-1]):  # the square and its mirror image
        far = size - crop
        corners = [(0, 0), (0, far), (far, 0), (far, far)]
        crops += [square[:, t : t + crop, left : left + crop] for t, left in corners]
        crops.append(centre(square, crop))
    return np.stack([normalise(c) for c in crops])


def image_files(paths):
    """(file, name in the output) for every file given and every image under a folder given."""
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.suffix.lower() in SPEC["extensions"])
            yield from ((p, p.relative_to(given).as_posix()) for p in files if p.is_file())
        else:
            yield given, given.name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--csv", help="write the table here (default: the standard output)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ten-crop", action="store_true")
    args = parser.parse_args()
    session = onnxruntime.InferenceSession(
        str(HERE / SPEC["model"]), providers=onnxruntime.get_available_providers()
    )
    k = min(args.top_k, len(SPEC["classes"]))
    ranked = [f"{name}_{r}" for r in range(1, k + 1) for name in ("class", "probability")]
    files = list(image_files(args.images))
    out = open(args.csv, "w", newline="") if args.csv else nullcontext(sys.stdout)  # noqa: SIM115
    with out as stream:
        table = csv.writer(stream)
        table.writerow(["path", "class", "probability", *ranked, "error"])
        for start in range(0, len(files), args.batch_size):
            write_rows(table, session, files[start : start + args.batch_size], args.ten_crop, k)


def write_rows(table, session, batch, ten_crop, k):
    """Classify one batch of (file, name) and write its rows; unreadable files get their error."""
    classes, inputs, errors = SPEC["classes"], {}, {}
    for i, (path, _) in enumerate(batch):
        try:
            inputs[i] = preprocess(path, ten_crop)
        except Exception as err:  # a file that cannot be read is listed and skipped
            errors[i] = f"{type(err).__name__}: {err}"
    probs = {}
    if inputs:
        feed = {SPEC["input"]["name"]: np.concatenate(list(inputs.values()))}
        (logits,) = session.run([SPEC["output"]["name"]], feed)
        logits = logits.reshape(len(inputs), -1, len(classes)).astype(np.float64)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        probs = dict(zip(inputs, (p / p.sum(-1, keepdims=True)).mean(1), strict=True))
    for i, (_, name) in enumerate(batch):
        if i in errors:
            table.writerow([name] + [""] * (2 + 2 * k) + [errors[i]])
            continue
        top = np.argsort(-probs[i], kind="stable")[:k]
        pairs = [v for c in top for v in (classes[c], f"{probs[i][c]:.6f}")]
        table.writerow([name] + pairs[:2] + pairs + [""])


if __name__ == "__main__":
    main()
