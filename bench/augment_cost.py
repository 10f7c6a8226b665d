"""What the training operations of ``data.augment`` cost per batch on this machine's CPU: the
batch transform's training side with the default list (the paper's crop and flip), and with one
more operation each (PCA colour noise, Cutout, a torchvision v2 transform listed as it is and so
run per image), and with the seed article's random-resized crop in place of the crop, on uint8
batches already in memory; one torch thread, as the batch transform
runs on the CPU.

``python -m bench.augment_cost`` prints the table; ``make bench`` adds it to bench/results.md
(section 6).
"""

import logging
import statistics
import time

import torch

from src.data.augment import CROPS_AND_FLIPS, build_operations
from src.data.batch_transform import BatchTransform

log = logging.getLogger(__name__)

# name -> the entry added to the default list
EXTRA = {
    "PCA colour noise (`+data/augment=pca_noise`)": {
        "pca_noise": {"_target_": "src.data.augment.PCANoise", "std": 0.1}
    },
    "Cutout (`+data/augment=cutout`)": {"cutout": {"_target_": "src.data.augment.Cutout"}},
    "torchvision `v2.ColorJitter`, per image (`+data/augment=color_jitter`)": {
        "color_jitter": {
            "_target_": "torchvision.transforms.v2.ColorJitter",
            "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
        }
    },
}  # fmt: skip
# in place of the paper's crop: the seed article's, per image (RandomResizedCrop's docstring)
RESIZED = {"crop": {"_target_": "src.data.augment.RandomResizedCrop"}}
# (batch, resize size, crop size): make train's, and the paper's
SIZES = ((32, 112, 96), (128, 256, 224))


def statistics_of(size: int) -> dict[str, torch.Tensor]:
    eigvecs, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    return {
        "mean_image": torch.rand(3, size, size, dtype=torch.float64),
        "eigvals": torch.tensor([0.001, 0.004, 0.05], dtype=torch.float64),
        "eigvecs": eigvecs,
    }


def milliseconds(transform: BatchTransform, images: torch.Tensor, reps: int) -> list[float]:
    transform(images, "train")  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        transform(images, "train")
        times.append((time.perf_counter() - start) * 1000)
    return times


def operation_costs(reps: int = 5) -> list[str]:
    """The table of section 6: ms per batch (median of ``reps``) of each list, and the extra
    milliseconds of the added operation over the default list, in each of the two sizes."""
    torch.manual_seed(0)
    lists = {"the default: crop, flip": dict(CROPS_AND_FLIPS)}
    lists |= {f"default + {name}": dict(CROPS_AND_FLIPS) | extra for name, extra in EXTRA.items()}
    lists["random-resized crop per image, flip (`+data/augment=random_resized_crop`)"] = (
        dict(CROPS_AND_FLIPS) | RESIZED
    )
    header = " | ".join(f"batch {b}, {s} -> {c} px: ms (extra)" for b, s, c in SIZES)
    lines = [
        "The batch transform's training side (`src/data/batch_transform.py`) on uint8 batches in "
        f"memory, CPU, one torch thread; median of {reps} calls after a warm-up.",
        "",
        f"| `data.augment` | {header} |",
        "|---|" + "---:|" * len(SIZES),
    ]
    cells: dict[str, list[str]] = {name: [] for name in lists}
    for batch, size, crop in SIZES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        base = None
        for name, augment in lists.items():
            transform = BatchTransform(
                crop, operations=build_operations(augment), statistics=statistics_of(size)
            )
            ms = statistics.median(milliseconds(transform, images, reps))
            base = ms if base is None else base
            extra = "" if ms is base else f" (+{ms - base:.1f})"
            cells[name].append(f"{ms:.1f}{extra}")
    lines += [f"| {name} | {' | '.join(values)} |" for name, values in cells.items()]
    return lines


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    log.info("\n".join(operation_costs()))
