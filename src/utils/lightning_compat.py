"""Every private or undocumented part of Lightning this project relies on, behind one door: an
upgrade that moves one fails here, by name (``tests/test_lightning_compat.py`` calls each
against the installed Lightning), not deep inside a run. Each says why it is needed."""

from typing import Any

from lightning import Trainer
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher


def relaunches_command_line(trainer: Trainer) -> bool:
    """Whether the strategy starts its other processes by running the command line again
    (``ddp`` outside SLURM or torchrun), which a multirun cannot survive: Lightning exposes the
    launcher only as ``_SubprocessScriptLauncher``."""
    launcher = trainer.strategy.launcher
    return isinstance(launcher, _SubprocessScriptLauncher) and (
        not launcher.cluster_environment.creates_processes_externally
    )


def batches_done(checkpoint: dict[str, Any]) -> int:
    """How far into its epoch a checkpoint was written (0 at an epoch's end), read from the loop
    state Lightning saves (``loops.fit_loop``), which it documents nowhere."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    return progress["current"]["completed"] if progress else 0
