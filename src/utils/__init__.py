"""Small helpers shared by the entry points, and the config resolvers they need. Nothing here
imports torch (``on_gpu`` does when it is called), so the command line answers before it loads."""

import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import wraps
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

log = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake in what the user typed or supplied (a config value, a data file, a checkpoint).

    Its message names the key or file and says what to do, so the entry points report it without
    a stack trace and exit non-zero.
    """


class ConfigError(UserError, ValueError):
    """A config value, or data that contradicts it, that cannot work; caught before any work."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the config points at is not there."""


def usable_cpus() -> int:
    """The cores this process may run on (its affinity where the platform says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on every platform
        return os.cpu_count() or 1


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``,
    skipping entries a user switched off with ``callbacks.NAME=null``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"optimizer": {"lr": 0.01}}}`` -> ``{"model.optimizer.lr": 0.01}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# What a required key (``???`` in the configs) looks like when given, for the one-line error.
EXAMPLES = {
    "data.root": "data.root=/path/to/dataset",
    "ckpt_path": "ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt",
    "image": "image=path/to/image.jpg (or a folder of images)",
}


def exit_on_user_error(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap an entry point's task function: a ``UserError``, or a required key left unset, is
    logged as one line (so it reaches the run's log file) and ends the process with status 1
    instead of a stack trace."""

    @wraps(main)
    def run(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
        except MissingMandatoryValue as err:
            key = err.full_key
            example = EXAMPLES.get(key, f"{key}=VALUE")
            log.error(
                "%s is required and not set: give it on the command line, e.g. %s", key, example
            )
            raise SystemExit(1) from None
        except Exception as err:
            # Hydra's instantiate wraps errors of the objects it builds: look down the chain.
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__
            if cause is None:
                raise
            log.error("%s", cause)
            raise SystemExit(1) from None

    return run


def on_gpu(accelerator: str, if_gpu: Any, otherwise: Any) -> Any:
    """``${on_gpu:${trainer.accelerator},A,B}`` in a config: A where the trainer runs on an NVIDIA
    GPU (accelerator gpu or cuda, or auto with CUDA available), else B. For the switches that pay
    off only there (bf16, channels-last, torch.compile, cudnn benchmark), so that ``make train``,
    ``trainer=gpu`` and ``trainer=ddp`` all get them and CPU runs stay as they were."""
    if accelerator in ("gpu", "cuda"):
        return if_gpu
    if accelerator != "auto":
        return otherwise
    import torch  # only where a task resolves its config: the command line stays fast

    return if_gpu if torch.cuda.is_available() else otherwise


OmegaConf.register_new_resolver("on_gpu", on_gpu, replace=True)


def slurm_job() -> str | None:
    """This SLURM job's id as ``scontrol`` takes it (``ARRAYJOB_TASK`` in an array), or None."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def run_id() -> str:
    """``${run_id:}``, the run folder's name: under SLURM the job's id (``slurm-JOB``, with
    ``.STEP`` for a job step), the same in every process of the job and after every requeue,
    so a requeued job finds its checkpoints; elsewhere the start time, to the microsecond."""
    job = slurm_job()
    if job is None:
        return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    step = os.environ.get("SLURM_STEP_ID")
    return f"slurm-{job}" + (f".{step}" if step is not None else "")


# cached: every use within one config reads one value, as with Hydra's ${now:...}
OmegaConf.register_new_resolver("run_id", run_id, use_cache=True, replace=True)
