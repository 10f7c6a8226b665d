"""AlexNet-224 training throughput on one GPU, input path and GPU switches side by side:
``python -m bench.bench_gpu [--out bench_gpu_out]`` (run by bench/bench_gpu.sh).

Rows, for ``model=alexnet`` and ``model=alexnet_owt``: the seed article's per-image pipeline
(ImageFolder + RandomResizedCrop(224) + flip); our cache path (memory map + the data module's
batch transform on the device: crops, flips and normalisation); + bf16 autocast and
channels-last; + torch.compile. Each is one plain training loop (SGD as configured) over the
loader. Then ``src.train`` itself, the Trainer with every default callback and logger on the same
images, its second epoch's rate as its ``Throughput`` callback logs it, beside the plain loop's
upper bound with every switch on. The GPU's wait is
1 - (images/s of the row) / (images/s of the same steps on one batch already on the GPU).
"""

import argparse
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from bench.benchmark import machine, seed_article_loader, train_config
from bench.jpegs import CLASSES, make_jpeg_tree
from src.data.folders import ImageFolderDataModule
from src.train import train

log = logging.getLogger(__name__)

VARIANTS = {
    # name: (input path, bf16 + channels-last, torch.compile)
    "seed article pipeline (PIL per image), fp32": ("article", False, False),
    "cache path, fp32": ("cache", False, False),
    "cache path + bf16 + channels-last": ("cache", True, False),
    "cache path + bf16 + channels-last + torch.compile": ("cache", True, True),
}


def endless(loader: Any) -> Iterator:
    while True:
        yield from loader


def step_rate(step: Callable[[], None], steps: int, batch: int, device: torch.device) -> float:
    """Images per second over ``steps`` calls of ``step`` after three warm-up calls."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - start)


def measure(
    preset: str, variant: tuple[str, bool, bool], loaders: dict, dm: ImageFolderDataModule,
    args: argparse.Namespace, device: torch.device,
) -> tuple[float, float]:  # fmt: skip
    """(images/s through the loader, images/s on one resident batch) of one row."""
    path, fast, compiled = variant
    cfg = train_config(f"model={preset}", "trainer.accelerator=cpu")
    torch.manual_seed(0)
    net = instantiate(cfg.model, class_names=[str(i) for i in range(14)]).net.to(device)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    if compiled:
        net.compile()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    autocast = torch.autocast(device.type, torch.bfloat16) if fast else nullcontext()

    def train_on(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    batches = loaders[path]

    def from_loader() -> None:
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if path == "cache":
            x = dm.transform(x, "train", channels_last=fast)
        else:
            x = x.contiguous(memory_format=memory_format)
        train_on(x, y)

    x, y = next(batches)
    x = x.to(device)
    resident_x = dm.transform(x, "train", channels_last=fast) if path == "cache" else x
    resident_x = resident_x.contiguous(memory_format=memory_format)
    resident_y = y.to(device)
    loop = step_rate(from_loader, args.steps, args.batch, device)
    compute = step_rate(lambda: train_on(resident_x, resident_y), args.steps, args.batch, device)
    return loop, compute


def src_train_rate(
    preset: str, tree: Path, args: argparse.Namespace, device: torch.device
) -> float:
    """Images/s of ``src.train`` on the tree: the Trainer, callbacks and loggers of a run, with
    the GPU's switches (``trainer=cpu`` off a GPU, for a dry run); the second epoch's rate, the
    first's compiling aside."""
    out = args.out / f"src_train_{preset}"
    cfg = train_config(
        f"model={preset}", "data=imagefolder", f"data.root={tree}",
        "trainer=gpu" if device.type == "cuda" else "trainer=cpu",
        f"data.cache_dir={args.out / 'cache'}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", "trainer.max_epochs=2",
        f"+trainer.limit_train_batches={args.steps}", "+trainer.limit_val_batches=1",
        "test=false", "callbacks.progress_bar=null", f"paths.log_dir={out}",
        f"model.compile={args.compile}",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return train(cfg)["train/images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_gpu_out"))
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--models", nargs="+", default=["alexnet", "alexnet_owt"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tree = make_jpeg_tree(args.out / "jpegs", {"train": args.images, "val": CLASSES})
    dm = ImageFolderDataModule(
        root=str(tree), batch_size=args.batch, num_workers=args.workers, backend="cache",
        cache_dir=str(args.out / "cache"), pin_memory=True,
    )  # fmt: skip
    build = time.perf_counter()
    dm.prepare_data()
    build = time.perf_counter() - build
    dm.setup("fit")
    article = seed_article_loader(tree, args.batch, args.workers, pin_memory=True)
    loaders = {"article": endless(article), "cache": endless(dm.train_dataloader())}
    variants = {k: v for k, v in VARIANTS.items() if args.compile or not v[2]}

    lines = [
        "# AlexNet-224 training on one GPU",
        "",
        f"Machine: {machine()}. Device used: {device}.",
        f"{args.images} JPEGs of 500x375, batch {args.batch}, {args.workers} loader workers, "
        f"{args.steps} timed steps per row; cache build {build:.1f} s.",
        "",
        "| model | pipeline | images/s | × article | GPU waits on data |",
        "|---|---|---:|---:|---:|",
    ]
    table = args.out / "results.md"
    for preset in args.models:
        base = None
        for name, variant in variants.items():
            loop, compute = measure(preset, variant, loaders, dm, args, device)
            base = base or loop
            wait = max(0.0, 1 - loop / compute)
            lines.append(f"| `{preset}` | {name} | {loop:,.0f} | {loop / base:.1f} | {wait:.0%} |")
            log.info(lines[-1])
            table.write_text("\n".join(lines) + "\n")  # row by row: a timeout keeps the rows
        rate = src_train_rate(preset, tree, args, device)
        wait = max(0.0, 1 - rate / compute)  # the last variant's: every switch on
        name = "`src.train`: the Trainer, callbacks, loggers" + (", compiled" * args.compile)
        lines.append(f"| `{preset}` | {name} | {rate:,.0f} | {rate / base:.1f} | {wait:.0%} |")
        log.info(lines[-1])
        table.write_text("\n".join(lines) + "\n")
    lines += ["", f"{time.perf_counter() - start:.0f} s in all."]
    table.write_text("\n".join(lines) + "\n")
    log.info("\n".join(lines))
    log.info("written to %s", table)


if __name__ == "__main__":
    main()
