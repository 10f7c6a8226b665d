"""Every claim re-measured on the code as committed, each into its results file
(``docs/results/NAME.json``), then the pages rendered from them.

    python -m src.experiments.reproduce                 # all of them: hours on a 2-core CPU
    python -m src.experiments.reproduce --only default_run,ablate_tta
    make reproduce ONLY=default_run

Resumable at the claim: one whose results file was measured on this code (the same ``src/``,
``conf/``, ``pyproject.toml`` and ``constraints.txt`` as HEAD) is skipped, so a run stopped
anywhere continues with the claim it was measuring. The tree must be committed first: a results
file records the commit it was measured on, and the results go in a later commit of their own.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from src.experiments.results import RESULTS_DIR, publish, read_results, render_pages, write_results
from src.experiments.runs import load_jobs
from src.utils.provenance import ROOT, code_changes, git, provenance, tree_fingerprint

log = logging.getLogger(__name__)

# what a results file's commit must share with HEAD to count as measured on this code
CODE = ("src", "conf", "pyproject.toml", "constraints.txt")
# claim -> the experiment whose sweep measures it (default_run: the default run, timed)
SWEEPS = {
    "ablate_lrn": "ablate_lrn",
    "ablate_pooling": "ablate_pooling",
    "ablate_dropout": "ablate_dropout",
    "ablate_augmentation": "ablate_augmentation",
    "ablate_groups": "ablate_groups",
    "ablate_tta": "ablate_tta",
    "seed_article": "seed_article",
}
CLAIMS = ("default_run", *SWEEPS)


def measured_on_this_code(name: str) -> bool:
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return False
    commit = read_results(name)["provenance"].get("commit")
    same = subprocess.run(
        ["git", "diff", "--quiet", str(commit), "HEAD", "--", *CODE], cwd=ROOT
    )  # fmt: skip
    return bool(commit) and same.returncode == 0


def run(args: list[str]) -> float:
    """``python ARGS`` from the checkout, its output shown; its wall seconds. A failure stops
    the reproduction (the claims measured so far keep their files)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"python {' '.join(args)} failed (exit {done.returncode})")
    return time.perf_counter() - start


def default_run(folder: Path) -> None:
    """``make train``'s run, timed, with its peak memory: the default run's table."""
    command = ["-m", "src.train", f"hydra.run.dir={folder}"]
    where = provenance("python " + " ".join(command[:2]))
    seconds = run(command)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    (job,) = load_jobs(ROOT / folder)
    curve = job.curves["val/acc"]
    best = max(range(len(curve)), key=curve.__getitem__)
    root = job.select("data.root")
    where["data"] = {"root": root, "files_sha256": tree_fingerprint(ROOT / root)}
    rows = [
        "| | this code |",
        "|---|---|",
        f"| wall time | {int(seconds // 60)} min {seconds % 60:.0f} s |",
        f"| best `val/acc` | {curve[best]:.4f} (epoch {best}, counting from 0 as "
        f"`epoch_{best:03d}.ckpt` does) |",
        f"| `test/acc` of the best checkpoint | {job.last('test/acc'):.4f} |",
        f"| peak resident memory of the training process | {peak_mb:,.0f} MB |",
    ]
    write_results("default_run", "\n".join(rows), where)


def sweep(name: str, folder: Path) -> None:
    """The claim's experiment into FOLDER; its report, with the sweep's provenance, published."""
    run(["-m", "src.train", f"experiment={SWEEPS[name]}", f"hydra.sweep.dir={folder}"])
    publish(ROOT / folder, name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(CLAIMS)}")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n] or list(CLAIMS)
    unknown = sorted(set(only) - set(CLAIMS))
    if unknown:
        raise SystemExit(f"--only {','.join(unknown)}: not a claim; the claims: {CLAIMS}")
    if code_changes():
        raise SystemExit(
            "Commit the code first: each results file records the commit it measured\n"
            + code_changes()
        )
    commit = git("rev-parse", "--short=7", "HEAD")
    for name in only:
        if measured_on_this_code(name):
            log.info("%s: measured on this code already, skipped", name)
            continue
        # relative to the checkout, where the commands run: the results files name it
        folder = Path("logs") / "reproduce" / f"{commit}-{name}-{time.strftime('%H%M%S')}"
        log.info("%s: measuring into %s", name, folder)
        default_run(folder) if name == "default_run" else sweep(name, folder)
        for page in render_pages():  # after each claim: a stop keeps every page current
            log.info("rendered %s", os.path.relpath(page, ROOT))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
