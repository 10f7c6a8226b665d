"""Side-by-side measurements on this machine, written to ``bench/results.md``:
``python -m bench.benchmark [--out PATH]`` (``make bench``, a few minutes).

1. Input path: images/s delivered to the model by the seed article's per-image pipeline and by
   ours, either backend (the cache after it is built), our batch transform included, on one
   JPEG tree, with the same workers.
2. Framework overhead: training images/s of a plain PyTorch loop and of our Lightning module at
   ``make train``'s model, input size and batch, on the same batches.
3. Only with ``--time-to-accuracy``, into ``bench/time_to_accuracy.md``: seconds until val/acc
   first reaches 50 % with ``make train``'s settings, pil path vs cache path (two training
   runs, stopped by Lightning's ``EarlyStopping``: 5-30 minutes, depending on the machine's
   load).
4. One SGD step of each model preset.
5. ``src.predict`` on a folder against ``src.eval`` on the same images, images/s with
   ``data.backend=pil`` (bench/predict_speed.py; with ``--images`` below its default, tiny sets).
6. The training operations of ``data.augment`` per batch on the CPU: the default list and one
   more operation each, a torchvision transform listed as it is among them
   (bench/augment_cost.py).
7. How fast each entry point's command line answers (``--help``, ``--cfg job``, ...;
   bench/cli_speed.py).

Every figure is the median of ``--reps`` repetitions, given with its range; the repetitions of
the alternatives compared alternate, so a change in the machine's load hits both.
"""

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from bench.augment_cost import operation_costs
from bench.cli_speed import command_line_times
from bench.jpegs import CLASSES, JPEG_SIZE, make_jpeg_tree
from bench.predict_speed import predict_vs_eval
from src.callbacks import StepClock
from src.data.batch_transform import IMAGENET_MEAN, IMAGENET_STD
from src.data.folders import ImageFolderDataModule
from src.experiments.results import RESULTS_DIR, write_results
from src.utils import instantiate_all
from src.utils.provenance import machine as provenance_machine
from src.utils.provenance import provenance, this_command

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PRESETS = ("alexnet_half", "alexnet_owt", "alexnet", "cnn4")
# the goals the tables are checked against: × the seed article's images/s for our two backends
# (batch transform on the CPU included), and Lightning's steady rate / the plain loop's
GOALS = {"pil": 1.0, "cache": 2.35}
LIGHTNING_GOAL = 0.91


def train_config(*overrides: str) -> DictConfig:
    """``make train``'s config (plus overrides), with run folders under ``paths.output_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def summary(rates: list[float]) -> tuple[float, str]:
    """Median and the range of the repetitions."""
    return statistics.median(rates), f"{min(rates):,.0f}-{max(rates):,.0f}"


def pair_ratios(rates: list[float], base: list[float]) -> list[float]:
    """The ratios of repetitions run back to back: a change in the machine's load between
    repetitions cancels out."""
    return [r / b for r, b in zip(rates, base, strict=True)]


def paired_ratio(rates: list[float], base: list[float]) -> str:
    """Median and range of the ratios of repetitions run back to back."""
    ratios = pair_ratios(rates, base)
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def verdict(ratios: list[float], goal: float) -> str:
    """Whether the median of the paired ratios reaches ``goal``."""
    return "met" if statistics.median(ratios) >= goal else "not met"


# 1. Input path


def images_per_second(
    batches: Callable[[], Iterable[Any]], transform: Callable
) -> tuple[float, float]:
    """Images per second of one pass over ``batches()``, each batch transformed as the model
    would receive it, and the share of the time spent in ``transform``."""
    start, seen, transforming = time.perf_counter(), 0, 0.0
    for batch in batches():
        before = time.perf_counter()
        images, labels = transform(batch)
        transforming += time.perf_counter() - before
        seen += len(labels)
    elapsed = time.perf_counter() - start
    return seen / elapsed, transforming / elapsed


def seed_article_loader(
    root: Path, batch: int, workers: int, pin_memory: bool = False
) -> DataLoader:
    """The seed article's training input: ImageFolder, RandomResizedCrop(224), flip, per image."""
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = ImageFolder(str(root / "train"), transform=augment)
    return DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True,
        pin_memory=pin_memory and torch.cuda.is_available(),
    )  # fmt: skip


def input_path(work: Path, count: int, batch: int, workers: int, reps: int) -> list[str]:
    """Section 1 as markdown lines."""
    tree = make_jpeg_tree(work / "jpegs", {"train": count, "val": CLASSES})
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    common = dict(root=str(tree), batch_size=batch, num_workers=workers, cache_dir=str(cache_dir))
    cached = ImageFolderDataModule(backend="cache", **common)
    start = time.perf_counter()
    cached.prepare_data()
    build_seconds = time.perf_counter() - start
    cache_bytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
    per_image = ImageFolderDataModule(backend="pil", **common)
    per_image.prepare_data()  # the file check: its verdicts came with the cache build
    for dm in (cached, per_image):
        dm.setup("fit")

    def transformed(dm: ImageFolderDataModule) -> Callable:
        """uint8 batches to the network's float input by the data module's own batch transform,
        here on the CPU (Lightning calls it in ``on_after_batch_transfer``)."""
        return lambda b: (dm.transform(b[0], "train"), b[1])

    article = seed_article_loader(tree, batch, workers)
    cache_loader, pil_loader = cached.train_dataloader(), per_image.train_dataloader()
    pipelines: dict[str, tuple[Callable, Callable]] = {
        "seed article: ImageFolder + RandomResizedCrop(224) + flip, per image (PIL)": (
            lambda: article, lambda b: b),
        "ours, `data.backend=pil` (decode + resize per image in the workers, crops/flips/"
        "normalisation per batch)": (lambda: pil_loader, transformed(per_image)),
        "ours, `data.backend=cache` (memory map + crops/flips/normalisation per batch)": (
            lambda: cache_loader, transformed(cached)),
        # on a GPU the batch transform runs there: this is all the CPU then has to keep up with
        "ours, `data.backend=cache`, uint8 batches only (the CPU's share when a GPU transforms)": (
            lambda: cache_loader, lambda b: b),
    }  # fmt: skip
    names = dict(zip(("article", "pil", "cache", "uint8"), pipelines, strict=True))

    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    shares: dict[str, list[float]] = {name: [] for name in pipelines}
    for batches, transform in pipelines.values():
        images_per_second(batches, transform)  # warm-up: workers start, files reach the cache
    for _ in range(reps):
        for name, (batches, transform) in pipelines.items():
            rate, share = images_per_second(batches, transform)
            rates[name].append(rate)
            shares[name].append(share)
    article_rates = rates[names["article"]]
    lines = [
        f"{count} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]} px in {CLASSES} classes, batch {batch}, "
        f"{workers} loader workers, output 224 px float batches on the CPU; {reps} passes each, "
        "one of each pipeline in turn; × article: median (range) of the ratios of passes run "
        "back to back.",
        "",
        "| pipeline | images/s (median) | range | × article | time in the batch transform |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in rates.items():
        median, spread = summary(values)
        ratio = paired_ratio(values, article_rates)
        share = statistics.median(shares[name])
        lines.append(f"| {name} | {median:,.0f} | {spread} | {ratio} | {share:.0%} |")
    goals = []
    for backend, goal in GOALS.items():
        ratios = pair_ratios(rates[names[backend]], article_rates)
        goals.append(
            f"`{backend}` ≥ {goal:.2f}: **{statistics.median(ratios):.2f}, "
            f"{verdict(ratios, goal)}**"
        )
    total = count + CLASSES  # train and val
    lines += [
        "",
        f"Goals, × article (median of the pairs): {'; '.join(goals)}.",
        "",
        f"Cache build (decode once, threads): {build_seconds:.1f} s for {total} images, "
        f"{cache_bytes / 1e6:.0f} MB on disk ({cache_bytes / total / 1e3:.0f} KB per image at "
        "256 px).",
    ]
    return lines


# 2. Framework overhead


def steady_rate(times: list[float], batch: int, warmup: int) -> float:
    return (len(times) - 1 - warmup) * batch / (times[-1] - times[warmup])


def plain_loop(
    cfg: DictConfig, train: DataLoader, val: DataLoader, classes: list[str], out: Path
) -> list[float]:
    """The same network, loss, optimizer and batches in a bare PyTorch loop, then one validation
    pass and a saved checkpoint; returns the step end times, the start time first."""
    start = time.perf_counter()
    torch.manual_seed(0)
    net = instantiate(cfg.model, class_names=classes).net
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    times = [start]
    net.train()
    for x, y in train:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter())
    net.eval()
    with torch.no_grad():
        for x, _ in val:
            net(x)
    torch.save(net.state_dict(), out / "plain.pt")
    times.append(time.perf_counter())
    return times


def lightning_run(
    cfg: DictConfig, train: DataLoader, val: DataLoader, classes: list[str], out: Path
) -> list[float]:
    """Our module with the Trainer, callbacks and logger of ``make train``; same return."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = instantiate(cfg.model, class_names=classes)
    clock = StepClock()
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_all(cfg.callbacks), clock],
        logger=instantiate_all(cfg.logger),
        max_epochs=1,
    )
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    return [start, *clock.times, time.perf_counter()]


def framework_overhead(work: Path, steps: int, reps: int) -> list[str]:
    """Section 2 as markdown lines."""
    out = Path(tempfile.mkdtemp(prefix="framework-", dir=work))
    cfg = train_config("trainer.accelerator=cpu", f"paths.output_dir={out}", f"paths.log_dir={out}")
    size, batch = cfg.data.crop_size, cfg.data.batch_size
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(batch, 3, size, size, generator=generator),
         torch.randint(0, CLASSES, (batch,), generator=generator))
        for _ in range(steps)
    ]  # fmt: skip
    # batch_size=None: the loaders hand out the prepared batches as they are
    train, val = DataLoader(batches, batch_size=None), DataLoader(batches[:2], batch_size=None)
    classes = [str(i) for i in range(CLASSES)]
    warmup = min(5, steps // 3)
    runs: dict[str, list[list[float]]] = {"plain PyTorch loop": [], "Lightning module": []}
    for _ in range(reps):
        runs["plain PyTorch loop"].append(plain_loop(cfg, train, val, classes, out))
        runs["Lightning module"].append(lightning_run(cfg, train, val, classes, out))
    lines = [
        f"`make train`'s model ({cfg.model.net._target_.rsplit('.', 1)[-1]}, "
        "`model=alexnet_half`), "
        f"{size} px, batch {batch}, SGD as configured, {steps} steps on the same in-memory "
        f"batches, then 2 validation batches and a checkpoint; {reps} runs each, alternating. "
        "Lightning with the progress bar, TensorBoard logging and every default callback.",
        "",
        "| loop | steady images/s (after warm-up) | range | whole run incl. start-up, s | range |",
        "|---|---:|---:|---:|---:|",
    ]
    steady, whole = {}, {}
    for name, all_times in runs.items():
        rate = steady[name] = [steady_rate(t[1:-1], batch, warmup) for t in all_times]
        seconds = whole[name] = [t[-1] - t[0] for t in all_times]
        lines.append(
            f"| {name} | {statistics.median(rate):,.1f} | {min(rate):,.1f}-{max(rate):,.1f} | "
            f"{statistics.median(seconds):.1f} | {min(seconds):.1f}-{max(seconds):.1f} |"
        )
    plain, lightning = runs
    extra = [w - p for w, p in zip(whole[lightning], whole[plain], strict=True)]
    lines += [
        "",
        f"Lightning / plain, steady state, median (range) of back-to-back pairs: "
        f"**{paired_ratio(steady[lightning], steady[plain])}** (goal ≥ {LIGHTNING_GOAL:.2f}: "
        f"{verdict(pair_ratios(steady[lightning], steady[plain]), LIGHTNING_GOAL)}); start-up and "
        f"end of run cost Lightning {statistics.median(extra):+.1f} s over the plain loop "
        "(median of pairs).",
    ]
    return lines


# 3. Time to accuracy


def stop_at(target: float) -> EarlyStopping:
    """Lightning's ``EarlyStopping`` that stops training once val/acc first reaches ``target``,
    checked after every validation (not the sanity check), never for a lack of improvement.

    Its threshold test is strict (val/acc > threshold), so the threshold is the float32 just below
    ``target``: val/acc is a float32, and val/acc > that is val/acc ≥ ``target``."""
    below = torch.nextafter(torch.tensor(target), torch.tensor(-1.0)).item()
    return EarlyStopping(
        monitor="val/acc", mode="max", stopping_threshold=below, patience=sys.maxsize,
        check_finite=False, check_on_train_epoch_end=False,
    )  # fmt: skip


def train_until(cfg: DictConfig, target: float) -> dict[str, Any] | None:
    """``python -m src.train``'s fit (seed, data module, model, its callbacks and logger) in this
    process, stopped at ``target`` val/acc; the epoch (counted from 0), val/acc and wall clock
    when it stopped, read from the trainer after fit, or None if it never reached ``target``."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, class_names=datamodule.classes)
    stop = stop_at(target)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_all(cfg.callbacks), stop],
        logger=instantiate_all(cfg.logger),
    )
    model.load_pretrained()
    trainer.fit(model, datamodule=datamodule)
    if stop.stopping_reason != EarlyStoppingReason.STOPPING_THRESHOLD:
        return None
    return {
        "time": time.time(),
        "epoch": stop.stopped_epoch,
        "val_acc": float(trainer.callback_metrics["val/acc"]),
    }


def time_to_accuracy(work: Path, target: float) -> list[str]:
    """Section 3: ``make train``'s fit with each backend, stopped at ``target`` val/acc; each
    run's record goes to ``reached.json`` in its folder."""
    lines = [
        f"`make train`'s settings with `data.backend=...`, fitted in the benchmark's process and "
        f"stopped by Lightning's `EarlyStopping` when val/acc first reaches {target:.0%}; wall "
        "time from the start of the run (imports done; data generation done beforehand, cache "
        "build included) until fit returns.",
        "",
        "| path | seconds to target | epoch | val/acc then |",
        "|---|---:|---:|---:|",
    ]
    instantiate(train_config(f"paths.root_dir={ROOT}", "data.backend=pil").data).prepare_data()
    for backend in ("pil", "cache"):
        run = Path(tempfile.mkdtemp(prefix=f"tta-{backend}-", dir=work))
        cfg = train_config(
            f"data.backend={backend}", "test=false", f"paths.root_dir={ROOT}",
            f"data.cache_dir={run / 'cache'}", f"paths.log_dir={run / 'logs'}",
            f"paths.output_dir={run / 'logs'}",
        )  # fmt: skip
        start = time.time()
        reached = train_until(cfg, target)
        if reached is None:
            lines.append(f"| `{backend}` | not reached in the configured epochs | | |")
            continue
        (run / "reached.json").write_text(json.dumps(reached))
        lines.append(
            f"| `{backend}` | {reached['time'] - start:.0f} | {reached['epoch']} | "
            f"{reached['val_acc']:.3f} |"
        )
    return lines


# 4. Model presets


def preset_step_rate(net: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, CLASSES, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    step()  # warm-up: allocations and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def presets(size: int, batch: int, steps: int) -> list[str]:
    lines = [
        f"One SGD step (forward, backward, update), {size} px, batch {batch}, {steps} steps.",
        "",
        "| preset | images/s | × alexnet_half |",
        "|---|---:|---:|",
    ]
    base = None
    classes = [str(i) for i in range(CLASSES)]
    for name in PRESETS:
        cfg = train_config(f"model={name}", "trainer.accelerator=cpu")
        rate = preset_step_rate(instantiate(cfg.model, class_names=classes).net, size, batch, steps)
        base = base or rate
        lines.append(f"| `{name}` | {rate:,.1f} | {rate / base:.2f} |")
    return lines


def machine() -> str:
    """The tables' machine line: provenance's machine, with torch's threads and versions."""
    found = provenance_machine()
    return (
        f"{found['cpu']}, {found['cores']} cores, {torch.get_num_threads()} torch threads, "
        f"GPU: {found['gpu'] or 'none'}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, Lightning {L.__version__}, {found['os']}"
    )


def load_average() -> float:
    """Processes ready to run, averaged over the last minute (NaN where the OS does not say)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        help="default: bench/results.md, or with --time-to-accuracy bench/time_to_accuracy.md",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "data" / "bench",
        help="the generated JPEG tree (kept) and the caches built from it",
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="input path batch (the article's)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=120, help="training steps per framework run")
    parser.add_argument("--preset-steps", type=int, default=3)
    parser.add_argument("--time-to-accuracy", action="store_true")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR,
        help="where the input path's table is written (bench_input_path.json, docs/speed.md's)",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    where = provenance(this_command(), {"images": args.images, "generator": "bench/jpegs.py"})
    args.work_dir.mkdir(parents=True, exist_ok=True)
    start, start_load = time.perf_counter(), load_average()
    work, reps = args.work_dir, args.reps
    if args.time_to_accuracy:
        out = args.out or ROOT / "bench" / "time_to_accuracy.md"
        sections = {"3. Time to accuracy": time_to_accuracy(work, args.target)}
    else:
        out = args.out or ROOT / "bench" / "results.md"
        sections = {
            "1. Input path": input_path(work, args.images, args.batch, args.workers, reps),
            "2. Framework overhead": framework_overhead(work, args.steps, reps),
            "4. Model presets": presets(112, 32, args.preset_steps),
            "5. Predict vs eval": predict_vs_eval(
                work, quick=args.images < parser.get_default("images"), reps=min(reps, 3)
            ),
            "6. Training operations": operation_costs(reps),
            "7. Command line": command_line_times(min(reps, 3)),
        }
    command = "python -m bench.benchmark " + " ".join(sys.argv[1:])
    text = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}.",
        f"Load average (1 min) at the start: {start_load:.1f}, at the end: {load_average():.1f}; "
        "other processes sharing the cores slow single repetitions (see the ranges).",
        f"Command: `{command.strip()}`, {time.perf_counter() - start:.0f} s in all.",
    ]
    for title, lines in sections.items():
        text += ["", f"## {title}", "", *lines]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    if not args.time_to_accuracy:
        table = "\n".join(sections["1. Input path"])
        write_results("bench_input_path", table, where, directory=args.results_dir)
    log.info("\n".join(text))
    log.info("written to %s", out)


if __name__ == "__main__":
    main()
