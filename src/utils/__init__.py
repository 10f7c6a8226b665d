"""Small helpers shared by the entry points, and the config resolver they need."""

import logging
import os
from collections.abc import Callable
from functools import wraps
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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


def exit_on_user_error(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap an entry point's task function: a ``UserError`` is logged (so it reaches the run's log
    file) and ends the process with status 1 instead of a stack trace."""

    @wraps(main)
    def run(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
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


def contradictions(
    section: str, requested: dict[str, Any], saved: dict[str, Any], changeable: tuple[str, ...] = ()
) -> list[str]:
    """``section.key=value`` for every requested value that differs from the saved one, except
    keys in ``changeable``; ``None`` (not set) and Hydra's ``_keys_`` never contradict."""
    return [
        f"{section}.{key}={value!r} (the checkpoint has {saved.get(key, 'no such key')!r})"
        for key, value in requested.items()
        if not key.startswith("_") and value is not None and key not in changeable
        and saved.get(key) != value
    ]  # fmt: skip


def on_gpu(accelerator: str, if_gpu: Any, otherwise: Any) -> Any:
    """``${on_gpu:${trainer.accelerator},A,B}`` in a config: A where the trainer runs on an NVIDIA
    GPU (accelerator gpu or cuda, or auto with CUDA available), else B. For the switches that pay
    off only there (bf16, channels-last, torch.compile, cudnn benchmark), so that ``make train``,
    ``trainer=gpu`` and ``trainer=ddp`` all get them and CPU runs stay as they were."""
    uses_gpu = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    return if_gpu if uses_gpu else otherwise


OmegaConf.register_new_resolver("on_gpu", on_gpu, replace=True)
