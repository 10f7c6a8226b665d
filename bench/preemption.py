"""What a stop costs on the default run (``python -m src.train``): the seconds from SIGTERM to the
process's end, of which the checkpoint's write, and how much longer a run stopped mid-epoch and
continued with ``ckpt_path=last`` takes in all than one that never stopped; side by side in one
go, with whether the two end with the same weights.

The stopped run gets SIGTERM, sent to its whole process group as ``kill`` and SLURM send it,
``--after`` seconds after its first ``last.ckpt`` appears, which is mid-way through its second
epoch. ``python -m bench.preemption [--epochs N]`` prints the table and writes it to
bench/preemption.md.
"""

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from src.experiments.results import write_results
from src.utils.io import load_checkpoint
from src.utils.provenance import provenance, this_command

log = logging.getLogger(__name__)
RESULTS = Path(__file__).with_name("preemption.md")
SAVED = re.compile(
    r"Stopped by a signal: saved epoch (\d+).*step (\d+), batch (\d+).* in ([\d.]+) s"
)


def command(run_dir: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "src.train", f"trainer.max_epochs={epochs}", "test=false",
        "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stopped_run(run_dir: Path, epochs: int, after: float) -> tuple[float, float, int]:
    """Seconds the run lived, seconds from SIGTERM to its end, and its exit status."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command(run_dir, epochs), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists() and process.poll() is None:
        time.sleep(0.05)
    time.sleep(after)
    signalled = time.perf_counter()
    os.killpg(process.pid, signal.SIGTERM)
    status = process.wait()
    end = time.perf_counter()
    return end - start, end - signalled, status


def measure(work: Path, epochs: int, after: float) -> str:
    # first, what only a first run does (the cache and the file checks), timed by neither
    timed(
        command(
            work / "warm", 1, "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1"
        )
    )
    whole = timed(command(work / "whole", epochs))
    lived, to_exit, status = stopped_run(work / "stopped", epochs, after)
    saved = SAVED.search((work / "stopped" / "train.log").read_text())
    if saved is None:
        raise RuntimeError(f"the stopped run (exit status {status}) logged no save")
    epoch, step, batch, save_s = saved.groups()
    resumed = timed(command(work / "stopped", epochs, "ckpt_path=last"))
    a = load_checkpoint(work / "whole" / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(work / "stopped" / "checkpoints" / "last.ckpt")["state_dict"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    extra = lived + resumed - whole
    return "\n".join([
        f"| the default run, {epochs} epochs | seconds |",
        "|---|---:|",
        f"| uninterrupted | {whole:.1f} |",
        f"| SIGTERM at epoch {epoch} (from 0), step {step}, batch {batch} of the epoch: "
        f"to the process's end (exit status {status}) | {to_exit:.1f} |",
        f"| of which writing `last.ckpt` | {float(save_s):.2f} |",
        f"| stopped + continued with `ckpt_path=last`, in all | {lived + resumed:.1f} |",
        f"| extra for the stop and the mid-epoch resume | {extra:.1f} |",
        "",
        f"Final weights of the continued run equal the uninterrupted run's: {same}.",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--after", type=float, default=3.0, help="seconds into epoch 2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    where = provenance(this_command(), {"data": "the built-in micrographs (data/micrographs)"})
    with tempfile.TemporaryDirectory() as work:
        table = measure(Path(work), args.epochs, args.after)
    write_results("preemption", table, where)
    RESULTS.write_text(
        f"# A stop and a resume\n\n`python -m bench.preemption --epochs {args.epochs}` on this "
        f"project's 2-core CPU:\n\n{table}\n"
    )
    log.info("\n%s\n(written to %s)", table, RESULTS)


if __name__ == "__main__":
    main()
