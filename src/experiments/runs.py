"""A sweep folder read back: every job's settings, curves and fate, from its files alone.

What each job leaves behind is enough: ``.hydra/config.yaml`` (the composed config),
``.hydra/overrides.yaml`` (what its command line and the sweeper set), ``.hydra/hydra.yaml``
(the config-group choices), TensorBoard events, and ``diverged.json`` when its loss stopped being
finite. So the reports work on a finished sweep, a sweep still running, or a copy from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass
class Job:
    """One job of a sweep."""

    name: str
    path: Path
    cfg: DictConfig
    # key -> value as written on the command line (``model=cnn4``, ``model.net.lrn=false``)
    overrides: dict[str, str]
    # config group -> chosen option (``model`` -> ``cnn4``)
    choices: dict[str, str]
    # tag -> values, one per logged step (per epoch for the epoch metrics)
    curves: dict[str, list[float]] = field(default_factory=dict)
    # seconds between the job's first and last TensorBoard event: training and evaluation,
    # without process start or data preparation
    seconds: float | None = None
    diverged: bool = False

    @property
    def seed(self) -> int | None:
        return self.cfg.get("seed")

    def select(self, key: str) -> Any:
        """A config value by dotted key, or a config group's choice by its name (``model``).
        A sweep run before the network had its own node (``model.net``) is read at the key it
        had then (``model.lrn``)."""
        if key in self.choices:
            return self.choices[key]
        value = OmegaConf.select(self.cfg, key, throw_on_missing=False)
        if value is None and key.startswith("model.net."):
            value = OmegaConf.select(self.cfg, f"model.{key[10:]}", throw_on_missing=False)
        return value

    def last(self, tag: str) -> float | None:
        values = self.curves.get(tag)
        return values[-1] if values and not self.diverged else None

    def best(self, tag: str) -> float | None:
        values = self.curves.get(tag)
        return max(values) if values and not self.diverged else None


def read_events(event_dir: Path) -> tuple[dict[str, list[float]], float | None]:
    """Every scalar curve under ``event_dir`` and the seconds its events span."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves, times = {}, []
    for tag in events.Tags()["scalars"]:
        scalars = events.Scalars(tag)
        curves[tag] = [e.value for e in scalars]
        times += [e.wall_time for e in scalars]
    return curves, (max(times) - min(times) if times else None)


def _overrides(job: Path) -> dict[str, str]:
    saved = job / ".hydra" / "overrides.yaml"
    items = OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else []
    pairs = (str(item).lstrip("+~").split("=", 1) for item in items)
    return {key: value for key, value in (p for p in pairs if len(p) == 2)}


def _choices(job: Path) -> dict[str, str]:
    saved = job / ".hydra" / "hydra.yaml"
    if not saved.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(saved), "hydra.runtime.choices", default={})
    return {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra")}


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job under ``sweep_dir`` that logged to TensorBoard or recorded its divergence, in
    the order the sweeper started them."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for saved in Path(sweep_dir).glob("**/.hydra/config.yaml"):
        path = saved.parent.parent
        diverged = (path / "diverged.json").is_file()
        events = path / "tensorboard"
        curves, seconds = read_events(events) if events.is_dir() else ({}, None)
        if not curves and not diverged:
            continue
        job_num = OmegaConf.select(
            OmegaConf.load(path / ".hydra" / "hydra.yaml"), "hydra.job.num", default=0
        )
        job = Job(
            name=str(path.relative_to(sweep_dir)),
            path=path,
            cfg=OmegaConf.load(saved),
            overrides=_overrides(path),
            choices=_choices(path),
            curves=curves,
            seconds=seconds,
            diverged=diverged,
        )
        jobs.append((job_num, job.name, job))
    return [job for *_, job in sorted(jobs, key=lambda t: (t[0], t[1]))]


def swept_keys(jobs: list[Job], ignore: tuple[str, ...] = ("seed",)) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys = dict.fromkeys(k for job in jobs for k in job.overrides if k not in ignore)
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
