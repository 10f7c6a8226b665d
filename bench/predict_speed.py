"""``src.predict`` on a folder against ``src.eval`` on the same images: images/s of each, both with
``data.backend=pil`` (decoding and resizing in the loader's workers included), and their ratio,
which should be at least ``GOAL``.

Two image sets: the 280 test micrographs of the default data set (``make train``'s model and
sizes), and 2,000 generated JPEGs of 500x375 (``data=imagefolder``, 256 -> 224). Each gets a
checkpoint from one training step, which is all the speed needs. Every figure is one call of
``evaluate`` or ``predict`` in this process, start to end: the checkpoint read, the files listed
(and, for eval, checked), every batch decoded, transformed and classified, and the results written
(the Trainer's start-up included for eval; the interpreter's start-up and imports not, for either).

``python -m bench.predict_speed [--quick]`` prints the table; ``make bench`` adds it to
bench/results.md (section 5).
"""

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from bench.jpegs import CLASSES, JPEG_SIZE, make_jpeg_tree
from src.data.micrographs import ensure_micrographs
from src.eval import evaluate
from src.predict import predict
from src.train import train
from src.utils.overrides import open_data_keys

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GOAL = 0.8


def config(name: str, out: Path, *overrides: str) -> DictConfig:
    """``conf/NAME.yaml`` as ``python -m src.NAME OVERRIDES`` composes it, writing into ``out``."""
    if name == "eval":
        overrides = open_data_keys(overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def one_step_checkpoint(run: Path, *data: str) -> Path:
    """``make train``'s model after one training step on ``data``, saved as last.ckpt."""
    overrides = [
        *data, "data.backend=pil", "trainer.accelerator=cpu", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "test=false",
        "callbacks.progress_bar=null", "callbacks.model_summary=null",
        f"paths.log_dir={run}",
    ]  # fmt: skip
    train(config("train", run, *overrides))
    return run / "checkpoints" / "last.ckpt"


def rates(ckpt: Path, root: Path, count: int, work: Path, reps: int) -> dict[str, list[float]]:
    """images/s of ``reps`` runs of each entry point over root/test, alternating, after one
    warm-up run of each (workers, the file system's cache, eval's file verdicts)."""
    eval_args = [f"ckpt_path={ckpt}", f"data.root={root}", "data.backend=pil", "split=test"]
    runs = {
        "eval": lambda out: evaluate(config("eval", out, *eval_args, "trainer.accelerator=cpu")),
        "predict": lambda out: predict(
            config("predict", out, f"ckpt_path={ckpt}", f"image={root / 'test'}", "device=cpu")
        ),
    }
    measured: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work)))
            if rep:
                measured[name].append(count / (time.perf_counter() - start))
    return measured


def predict_vs_eval(work: Path, quick: bool = False, reps: int = 3) -> list[str]:
    """The section as markdown lines; ``quick``: 28 JPEGs and a micrograph set of one test image
    per class (a check that it runs, not a measurement)."""
    work = Path(tempfile.mkdtemp(prefix="predict-", dir=work))
    per_class, jpegs = (1, 28) if quick else (20, 2000)
    train_cfg = config("train", work, f"paths.root_dir={ROOT}")
    micrographs = ROOT / "data" / "micrographs"
    if quick:
        micrographs = work / "micrographs"
        sizes = {"train_per_class": 1, "val_per_class": 1, "test_per_class": per_class}
    else:
        sizes = {k: train_cfg.data[k] for k in ("train_per_class", "val_per_class")}
        sizes["test_per_class"] = train_cfg.data.test_per_class
    data = train_cfg.data
    ensure_micrographs(micrographs, image_size=data.image_size, seed=data.seed, **sizes)
    micrograph_data = [f"data.root={micrographs}", f"data.cache_dir={work / 'cache'}"]
    micrograph_data += [f"data.{k}={v}" for k, v in sizes.items()]
    counts = {"test": jpegs, "train": CLASSES, "val": CLASSES}
    jpeg_root = make_jpeg_tree(work.parent / "predict-jpegs", counts)
    jpeg_data = ["data=imagefolder", f"data.root={jpeg_root}", f"data.cache_dir={work / 'cache'}"]
    sets = {
        f"{CLASSES * per_class} test micrographs of {train_cfg.data.image_size} px "
        f"(`make train`'s model and sizes, {train_cfg.data.resize_size} -> "
        f"{train_cfg.data.crop_size}, batch {train_cfg.data.batch_size})": (
            one_step_checkpoint(work / "micrographs-run", *micrograph_data), micrographs,
            CLASSES * per_class),
        f"{jpegs} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]} (`data=imagefolder`, 256 -> 224, "
        "batch 128)": (one_step_checkpoint(work / "jpeg-run", *jpeg_data), jpeg_root, jpegs),
    }  # fmt: skip
    lines = [
        f"`model=alexnet_half`, CPU, `data.backend=pil`, the checkpoint's batch size and loader "
        f"workers for both; each figure is one whole `evaluate(...)` or `predict(...)` call in one "
        f"process (checkpoint read, files listed, decoded, classified, results written), {reps} "
        "runs each after a warm-up, alternating.",
        "",
        "| images | `src.eval` images/s | `src.predict` images/s | predict / eval (pairs) |",
        "|---|---:|---:|---:|",
    ]
    ratios_all = []
    for name, (ckpt, root, count) in sets.items():
        measured = rates(ckpt, root, count, work, reps)
        ratios = [p / e for p, e in zip(measured["predict"], measured["eval"], strict=True)]
        ratios_all.append(statistics.median(ratios))
        lines.append(
            f"| {name} | {statistics.median(measured['eval']):,.1f} | "
            f"{statistics.median(measured['predict']):,.1f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    verdict = "met" if min(ratios_all) >= GOAL else "not met"
    lines += ["", f"Goal, predict / eval ≥ {GOAL} for both: **{verdict}**."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny image sets: does it run?")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the runs' own logs: quiet
    log.setLevel(logging.INFO)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log.info("\n".join(predict_vs_eval(args.work_dir, args.quick, args.reps)))


if __name__ == "__main__":
    main()
