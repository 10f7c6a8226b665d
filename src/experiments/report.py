"""Any sweep as a table: one row per variant (the values of the keys it swept), every seed's value
and mean ± std, and whether each variant's difference from the first exceeds the seed spread.

``SweepReport`` runs when a multirun ends and writes ``results.md`` and ``results.json`` into the
sweep folder; ``python -m src.experiments.report SWEEP_DIR`` does the same for any sweep folder.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from src.experiments.runs import Job, load_jobs, swept_keys
from src.utils.io import atomic_write
from src.utils.provenance import provenance, this_command, tree_fingerprint

log = logging.getLogger(__name__)


def _gap(job: Job, suffix: str) -> float | None:
    train, val = job.last("train/acc"), job.last("val/acc")
    return None if train is None or val is None else train - val


def _epochs(job: Job, suffix: str) -> float | None:
    return float(len(job.curves.get("train/acc", []))) or None


# column -> how a job's value is read; ``suffix`` selects metric variants (``_tencrop``)
COLUMNS: dict[str, Callable[[Job, str], float | None]] = {
    "final val/acc": lambda job, s: job.last(f"val/acc{s}"),
    "best val/acc": lambda job, s: job.best(f"val/acc{s}"),
    "final val/acc_top5": lambda job, s: job.last(f"val/acc_top5{s}"),
    "train - val acc": _gap,
    "epochs": _epochs,
    "test/acc": lambda job, s: job.last(f"test/acc{s}"),
    "test/acc_top5": lambda job, s: job.last(f"test/acc_top5{s}"),
    "minutes": lambda job, s: job.seconds / 60 if job.seconds is not None else None,
}


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "values": list(values),
        "mean": statistics.fmean(known) if known else None,
        "std": statistics.stdev(known) if len(known) > 1 else None,
        "min": min(known) if known else None,
        "max": max(known) if known else None,
    }


def _difference(row: dict[str, Any], base: dict[str, Any], metric: str) -> dict[str, Any]:
    """Mean difference; whether it exceeds the seed spread (every seed of one variant above every
    seed of the other: the ranges do not overlap, which with three seeds a chance difference
    rarely gives); and the same-seed differences, for variants that share a run's seed (or, as
    for ten crops vs the centre crop, its very network)."""
    a, b = row["metrics"][metric], base["metrics"][metric]
    mine = dict(zip(row["seeds"], a["values"], strict=True))
    theirs = dict(zip(base["seeds"], b["values"], strict=True))
    paired = [mine[s] - theirs[s] for s in mine if s in theirs and None not in (mine[s], theirs[s])]
    result = {
        "vs": base["label"],
        "delta": None,
        "exceeds_seed_spread": None,
        "same_seed_differences": paired,
    }
    if a["mean"] is None or b["mean"] is None:
        return result
    separated = a["min"] > b["max"] or a["max"] < b["min"]
    several = min(len(row["seeds"]), len(base["seeds"])) > 1
    return result | {"delta": a["mean"] - b["mean"], "exceeds_seed_spread": separated and several}


def _same_seed(diff: dict[str, Any] | None) -> str:
    """ "higher in 3 of 3 seeds": how often the variant beat the first row seed for seed."""
    paired = (diff or {}).get("same_seed_differences") or []
    if not paired:
        return "-"
    higher = sum(d > 0 for d in paired)
    return f"higher in {higher} of {len(paired)}"


def summarise(
    jobs: Sequence[Job],
    metric: str = "final val/acc",
    suffixes: dict[str, str] | None = None,
    variant_keys: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rows per variant: the swept keys' values (or, with ``suffixes``, one row per metric
    variant of every job, e.g. ``{"centre crop": "", "ten crops": "_tencrop"}``)."""
    keys = list(variant_keys) if variant_keys is not None else swept_keys(list(jobs))
    groups: dict[str, tuple[str, list[Job]]] = {}
    if suffixes:
        for label, suffix in suffixes.items():
            groups[label] = (suffix, list(jobs))
    else:
        for job in jobs:
            # a config group's option by the group's last name: augmentation=none
            label = ", ".join(
                f"{k.rsplit('/', 1)[-1]}={job.overrides.get(k, job.select(k))}" for k in keys
            )
            label = label or "all"
            groups.setdefault(label, ("", []))[1].append(job)
    if not columns:  # every column some job has a value for
        columns = [
            c
            for c in COLUMNS
            if any(COLUMNS[c](j, s) is not None for s, js in groups.values() for j in js)
        ]
    columns = list(columns)
    rows = []
    for label, (suffix, members) in groups.items():
        members = sorted(members, key=lambda j: (j.seed is None, j.seed))
        rows.append(
            {
                "label": label,
                "settings": {k: members[0].overrides.get(k) for k in keys},
                "seeds": [j.seed for j in members],
                "jobs": [j.name for j in members],
                "diverged": [j.diverged for j in members],
                "metrics": {c: _stats([COLUMNS[c](j, suffix) for j in members]) for c in columns},
            }
        )
    if metric not in columns:
        metric = columns[0] if columns else metric
    for row in rows[1:]:
        row["difference"] = _difference(row, rows[0], metric)
    return {"swept": keys, "metric": metric, "columns": columns, "variants": rows}


def _cell(stats: dict[str, Any], digits: int = 3) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _value(value: float | None, diverged: bool) -> str:
    return "diverged" if diverged else "-" if value is None else f"{value:.3f}"


def table(summary: dict[str, Any]) -> str:
    """Markdown: mean ± std per variant and column, then every seed's value of the headline
    metric and the difference from the first variant."""
    columns, metric = summary["columns"], summary["metric"]
    digits = {"epochs": 1, "minutes": 1}
    lines = [
        "| variant | seeds | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in summary["variants"]:
        cells = [_cell(row["metrics"][c], digits.get(c, 3)) for c in columns]
        failed = sum(row["diverged"])
        seeds = f"{len(row['seeds'])}" + (f" ({failed} diverged)" if failed else "")
        lines.append(f"| {row['label']} | {seeds} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{metric} per seed, and the difference of the means from the first row (beyond the "
        "seed spread: every seed of one variant above every seed of the other):",
        "",
        f"| variant | seed: {metric} | difference | beyond the seed spread | same seed |",
        "|---|---|---|---|---|",
    ]
    for row in summary["variants"]:
        values = row["metrics"][metric]["values"]
        per_seed = ", ".join(
            f"{seed}: {_value(v, d)}"
            for seed, v, d in zip(row["seeds"], values, row["diverged"], strict=True)
        )
        diff = row.get("difference")
        delta = "-" if diff is None or diff["delta"] is None else f"{diff['delta']:+.3f}"
        beyond = (
            "-"
            if diff is None or diff["exceeds_seed_spread"] is None
            else ("yes" if diff["exceeds_seed_spread"] else "no")
        )
        lines.append(f"| {row['label']} | {per_seed} | {delta} | {beyond} | {_same_seed(diff)} |")
    return "\n".join(lines)


def data_fingerprint(job: Job) -> dict[str, Any]:
    """What identifies a sweep's data: its module, root, cache format and files."""
    from src.data.cache import CACHE_VERSION

    root = job.select("data.root")
    return {
        "datamodule": job.select("data._target_"),
        "root": root,
        "cache_format": CACHE_VERSION,
        "files_sha256": tree_fingerprint(root) if root else None,
    }


def report(
    sweep_dir: str | Path,
    title: str = "Sweep results",
    claim: str | None = None,
    metric: str = "final val/acc",
    suffixes: dict[str, str] | None = None,
    columns: Sequence[str] | None = None,
    seconds: float | None = None,
    where: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read the sweep in ``sweep_dir``, write results.md and results.json there, return the
    summary (also with the sweep's wall time, when known, and ``where`` it ran: its
    provenance, this command's where not given)."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"No job under {sweep_dir} logged TensorBoard events")
    summary = {"title": title, "claim": claim, "sweep_dir": str(sweep_dir), "suffixes": suffixes}
    summary |= summarise(jobs, metric, suffixes, columns=columns)
    summary["wall_seconds"] = seconds
    summary["provenance"] = (where or provenance(this_command())) | {
        "data": data_fingerprint(jobs[0])
    }
    text = [f"# {title}", ""]
    if claim:
        text += [f"The paper: {claim}", ""]
    text += [table(summary), ""]
    if seconds is not None:
        text += [f"Wall time of the sweep: {seconds / 60:.1f} min for {len(jobs)} jobs.", ""]
    atomic_write(sweep_dir / "results.json", json.dumps(summary, indent=2))
    atomic_write(sweep_dir / "results.md", "\n".join(text))
    return summary


def log_to_sweep(sweep_dir: Path, message: str, *args: Any) -> None:
    """Log to the console and to the sweep's own ``report.log``, next to the results."""
    handler = logging.FileHandler(sweep_dir / "report.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s] - %(message)s"))
    log.addHandler(handler)
    try:
        log.info(message, *args)
    finally:
        log.removeHandler(handler)
        handler.close()


class SweepReport(HydraCallback):
    """When the multirun ends, tables it into results.md and results.json in its folder."""

    def __init__(
        self,
        title: str = "Sweep results",
        claim: str | None = None,
        metric: str = "final val/acc",
        suffixes: dict[str, str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.title, self.claim, self.metric = title, claim, metric
        self.suffixes = dict(suffixes) if suffixes else None
        self.columns = list(columns) if columns else None
        self.start = time.perf_counter()
        self.where: dict[str, Any] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.perf_counter()
        self.where = provenance(this_command())  # the code and time the sweep started with

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        seconds = time.perf_counter() - self.start
        summary = report(
            sweep_dir, self.title, self.claim, self.metric, self.suffixes, self.columns, seconds,
            self.where,
        )  # fmt: skip
        log_to_sweep(
            sweep_dir,
            "%s\n%s\nresults  %s, %s\ncurves   tensorboard --logdir %s",
            self.title, table(summary), sweep_dir / "results.md", sweep_dir / "results.json",
            sweep_dir,
        )  # fmt: skip


def main(folders: Sequence[str]) -> None:
    """Table sweep folders again (after more seeds were run into them, say), with the title,
    metric and variants their earlier report used."""
    for folder in folders:
        earlier = Path(folder) / "results.json"
        options = json.loads(earlier.read_text()) if earlier.is_file() else {}
        keep = ("title", "claim", "metric", "suffixes", "columns")
        # the sweep's own provenance where its report recorded one, else this command's
        where = options.get("provenance")
        summary = report(folder, **{k: options[k] for k in keep if options.get(k)}, where=where)
        log.info("%s", table(summary))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
