"""The paper's Figure 1 (section 3.1) from a sweep: epochs to a training error, figure, summary.

Every job of a ``relu_vs_tanh`` sweep is one (condition, activation, learning rate, seed). The
paper tuned each activation's learning rate separately, so per condition and activation the rate
that reaches the target training error in the fewest epochs is chosen, and the speed-up is the
ratio of the chosen rates' epochs, tanh / ReLU. Everything is read back from the jobs' folders
(saved config and TensorBoard events), so the same code serves the end-of-sweep callback, the
notebook and any sweep folder copied from elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from src.experiments.figures import figure1
from src.experiments.report import log_to_sweep
from src.experiments.runs import load_jobs
from src.utils.io import atomic_write, write_figure

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "tanh")


def epochs_to_target(errors: Sequence[float], target: float) -> int | None:
    """The first epoch (counting from 1) whose error is at or below ``target``; None if none."""
    return next((i for i, e in enumerate(errors, start=1) if e <= target), None)


@dataclass
class Run:
    """One job of a sweep: its settings and per-epoch curves."""

    name: str
    activation: str
    lr: float
    seed: int | None
    condition: str
    errors: list[float]
    val_errors: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    # the loss stopped being finite: the job left diverged.json and whatever curves it had
    diverged: bool = False

    @property
    def final_error(self) -> float | None:
        return self.errors[-1] if self.errors and not self.diverged else None


def load_runs(
    sweep_dir: str | Path, condition_keys: Sequence[str] = (), metric: str = "train/error"
) -> list[Run]:
    """Every job under ``sweep_dir`` with ``metric`` curves or a record of its divergence;
    ``condition_keys`` (config paths such as ``model.net.init``, or a config group such as
    ``model``, named by its chosen option) name the condition of a job."""
    runs = []
    for job in load_jobs(sweep_dir):
        if metric not in job.curves and not job.diverged:
            continue
        runs.append(
            Run(
                name=job.name,
                activation=str(job.select("model.net.activation")),
                lr=float(job.cfg.model.optimizer.lr),
                seed=job.seed,
                condition=", ".join(
                    f"{k.rsplit('.', 1)[-1]}={job.select(k)}" for k in condition_keys
                )
                or "all",
                errors=job.curves.get(metric, []),
                val_errors=job.curves.get("val/error", []),
                seconds=job.curves.get("train/seconds", []),
                diverged=job.diverged,
            )
        )
    return runs


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def _choose(runs: list[Run], target: float) -> dict[str, Any]:
    """Per learning rate, the epochs to target over seeds; the chosen rate is the fastest (a run
    that never gets there counts as infinitely slow; ties go to the lower final error)."""
    by_lr: dict[float, list[Run]] = {}
    for run in runs:
        by_lr.setdefault(run.lr, []).append(run)

    def cost(lr: float) -> tuple[float, float]:
        hits = [epochs_to_target(r.errors, target) for r in by_lr[lr]]
        epochs = math.inf if None in hits else _mean(hits)
        finals = (math.inf if r.final_error is None else r.final_error for r in by_lr[lr])
        return epochs, _mean(finals)

    lr = min(by_lr, key=cost)
    chosen = sorted(by_lr[lr], key=lambda r: (r.seed is None, r.seed))
    epochs = [epochs_to_target(r.errors, target) for r in chosen]
    seconds = [
        r.seconds[e - 1] if e and len(r.seconds) >= e else None
        for r, e in zip(chosen, epochs, strict=False)
    ]
    return {
        "lr": lr,
        "lrs_tried": sorted(by_lr),
        # with three or more rates, a chosen end of the grid says the best may lie beyond it
        "lr_at_grid_edge": len(by_lr) > 2 and lr in (min(by_lr), max(by_lr)),
        "seeds": [r.seed for r in chosen],
        "epochs_run": [len(r.errors) for r in chosen],
        "diverged": [r.diverged for r in chosen],
        "epochs_to_target": epochs,
        "seconds_to_target": seconds,
        "final_train_error": [r.final_error for r in chosen],
        "runs": [r.name for r in chosen],
    }


def _ratio(relu: dict[str, Any], tanh: dict[str, Any]) -> dict[str, Any]:
    """tanh / ReLU epochs for each seed both activations ran (paired by seed value, so a missing
    job never pairs different seeds); where one side never reached the target, a bound."""

    def by_seed(entry: dict[str, Any]) -> dict[Any, tuple[int | None, int]]:
        pairs = zip(entry["epochs_to_target"], entry["epochs_run"], strict=True)
        return dict(zip(entry["seeds"], pairs, strict=True))

    relu_seeds, tanh_seeds = by_seed(relu), by_seed(tanh)
    seeds = [s for s in relu_seeds if s in tanh_seeds]
    per_seed, text = [], []
    for seed in seeds:
        (r, r_max), (t, t_max) = relu_seeds[seed], tanh_seeds[seed]
        per_seed.append(t / r if r and t else None)
        if r and t:
            text.append(f"{t / r:.2f}")
        elif r:
            text.append(f">{t_max / r:.2f}")
        elif t:
            text.append(f"<{t / r_max:.2f}")
        else:
            text.append("n/a")
    values = [v for v in per_seed if v is not None]
    mean = _mean(values) if values and len(values) == len(per_seed) else None
    spread = ""
    if mean is not None and len(values) > 1:
        spread = f" (mean {mean:.2f}, min-max {min(values):.2f}-{max(values):.2f})"
    unpaired = sorted(set(relu_seeds) ^ set(tanh_seeds), key=str)
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "text": ", ".join(text) + spread,
        "mean": mean,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        # seeds only one activation ran: left out of the ratio
        "unpaired_seeds": unpaired,
    }


def summarise(runs: Sequence[Run], target: float = 0.25) -> dict[str, Any]:
    """Per condition: the chosen learning rate of each activation, its epochs and seconds to
    ``target``, its final training error, and the speed-up tanh / ReLU in epochs."""
    conditions: dict[str, dict[str, Any]] = {}
    for condition in dict.fromkeys(r.condition for r in runs):
        entry: dict[str, Any] = {}
        for act in ACTIVATIONS:
            mine = [r for r in runs if r.condition == condition and r.activation == act]
            if mine:
                entry[act] = _choose(mine, target)
        if all(a in entry for a in ACTIVATIONS):
            entry["speedup_tanh_over_relu"] = _ratio(entry["relu"], entry["tanh"])
        conditions[condition] = entry
    return {"target_train_error": target, "metric": "train/error", "conditions": conditions}


def _fmt_epochs(entry: dict[str, Any]) -> str:
    parts = []
    for e, n, diverged in zip(
        entry["epochs_to_target"], entry["epochs_run"], entry["diverged"], strict=False
    ):
        parts.append(
            f"diverged in epoch {n + 1}" if diverged else str(e) if e else f"not reached in {n}"
        )
    return ", ".join(parts)


def _fmt_seconds(entry: dict[str, Any]) -> str:
    return ", ".join(f"{s:.0f}" if s is not None else "-" for s in entry["seconds_to_target"])


def summary_table(summary: dict[str, Any]) -> str:
    """A Markdown table, one row per condition and activation (seeds comma-separated)."""
    target = summary["target_train_error"]
    by_activation = {
        a: {tuple(c[a]["lrs_tried"]) for c in summary["conditions"].values() if a in c}
        for a in ACTIVATIONS
    }
    grids = {grid for tried in by_activation.values() for grid in tried}
    if len(grids) == 1:
        grid = ", ".join(f"{lr:g}" for lr in next(iter(grids)))
    elif all(len(tried) == 1 for tried in by_activation.values() if tried):
        grid = "; ".join(
            f"{a} {', '.join(f'{lr:g}' for lr in next(iter(tried)))}"
            for a, tried in by_activation.items()
            if tried
        )
    else:
        grid = "the rates its condition tried (lrs_tried in results.json)"
    lines = [
        f"Epochs to {target:.0%} training error; learning rate chosen per activation from "
        f"{grid} (* at the edge of the grid: widen it).",
        "",
        "| condition | activation | lr | epochs to target | seconds | final train error "
        "| tanh / ReLU |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition, entry in summary["conditions"].items():
        ratio = entry.get("speedup_tanh_over_relu", {}).get("text", "-")
        for act in ACTIVATIONS:
            if act not in entry:
                continue
            e = entry[act]
            final = ", ".join("-" if x is None else f"{x:.3f}" for x in e["final_train_error"])
            lr = f"{e['lr']:g}" + ("*" if e["lr_at_grid_edge"] else "")
            cells = [condition, act, lr, _fmt_epochs(e), _fmt_seconds(e), final]
            cells.append(ratio if act == "relu" else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    sweep_dir: str | Path,
    target: float = 0.25,
    condition_keys: Sequence[str] = (),
    figure: str = "figure1.png",
) -> dict[str, Any]:
    """Read a sweep, write ``figure``, results.json and results.md into it; return the summary."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir, condition_keys)
    if not runs:
        raise FileNotFoundError(f"No runs with TensorBoard train/error events under {sweep_dir}")
    summary = summarise(runs, target)
    write_figure(figure1(runs, summary), sweep_dir / figure, dpi=120)
    atomic_write(sweep_dir / "results.json", json.dumps(summary, indent=2))
    table = summary_table(summary)
    atomic_write(sweep_dir / "results.md", f"# ReLU vs tanh: the paper's Figure 1\n\n{table}\n")
    return summary


class ReluVsTanhReport(HydraCallback):
    """At the end of the multirun, turns the sweep folder into figure1.png and the results."""

    def __init__(
        self,
        target: float = 0.25,
        condition_keys: Sequence[str] = (),
        figure: str = "figure1.png",
    ) -> None:
        self.target = target
        self.condition_keys = list(condition_keys)
        self.figure = figure

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A rate typed on the command line would be every step's: the same job, run thrice."""
        task = {
            o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[-1]
            for o in config.hydra.overrides.task
        }
        steps = task.get("relu_vs_tanh.step", config.hydra.sweeper.params.get("relu_vs_tanh.step"))
        if "model.optimizer.lr" in task and "," in str(steps or ""):
            # Hydra turns a callback's exceptions into warnings and goes on: stop here instead.
            log.error(
                "model.optimizer.lr=%s gives every step of relu_vs_tanh.step=%s the same rate. "
                "Add relu_vs_tanh.step=best to race at these rates, or set each activation's "
                "grid: relu_vs_tanh.rates.relu.lower=...", task["model.optimizer.lr"], steps,
            )  # fmt: skip
            raise SystemExit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = report(sweep_dir, self.target, self.condition_keys, self.figure)
        log_to_sweep(
            sweep_dir,
            "ReLU vs tanh\n%s\nfigure   %s\nresults  %s, %s\ncurves   tensorboard --logdir %s",
            summary_table(summary), sweep_dir / self.figure, sweep_dir / "results.md",
            sweep_dir / "results.json", sweep_dir,
        )  # fmt: skip
