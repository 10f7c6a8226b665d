"""Every private or undocumented part of Lightning this project relies on, behind one door: an
upgrade that moves one fails here, by name (``tests/test_lightning_compat.py`` calls each
against the installed Lightning), not deep inside a run. Each says why it is needed."""

import logging
import signal
from collections.abc import Callable
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose
from torch.utils.data import Dataset


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
    if not progress or progress.get("is_last_batch"):  # an epoch's end counts all its batches
        return 0
    return progress["current"]["completed"]


def batches_in_epoch(trainer: Trainer) -> int:
    """The batches of the current epoch done so far; Lightning keeps the count in its loops'
    progress, which it documents nowhere."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def epochs_done(trainer: Trainer) -> int:
    """The epochs finished, which the loader's order needs before Lightning sets the epoch (its
    first iterator is made earlier): the fit loop's progress, documented nowhere."""
    return trainer.fit_loop.epoch_progress.current.processed


def unrepeated_sampler(
    dataset: Dataset, world_size: int, rank: int
) -> UnrepeatedDistributedSampler:
    """Each process's share of an evaluation split, every image once: PyTorch's distributed
    sampler pads the shares with repeated images, which biases val/acc. Lightning's sampler
    that does not pad lives in ``lightning.pytorch.overrides``, not in its public API."""
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)


def one_console_for_lightning() -> None:
    """Lightning's package logger prints to a console handler of its own, whatever else is set
    up: under Hydra, whose handlers print and file every record, each of Lightning's lines would
    print twice. Where the root logger has handlers, Lightning's records go to them alone (so
    the run's log file holds them too)."""
    if not logging.getLogger().handlers:
        return
    package = logging.getLogger("lightning")
    for handler in list(package.handlers):
        if type(handler) is logging.StreamHandler:
            package.removeHandler(handler)


def trainer_of(module: LightningModule) -> Trainer | None:
    """The trainer a module is attached to, or None: Lightning's ``trainer`` property raises
    where there is none, and only its private ``_trainer`` says so quietly."""
    return module._trainer


def every_process(value: Any, world_size: int) -> list[Any]:
    """``value`` of every process of a distributed run, in rank order (a collective call: every
    process calls it at the same point, as Lightning saves checkpoints). Lightning's strategies
    gather tensors only; this is torch.distributed's own for any picklable value."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def lightning_sigterm_handler() -> Callable[..., Any] | None:
    """The SIGTERM handler Lightning installs while fitting, or None outside fit. Calling it
    makes the trainer stop after the current step (on every process of a DDP run) and raise
    ``SIGTERMException``: the only way into that path, which Lightning's signal connector keeps
    private. It also calls the handler it replaced."""
    handler = signal.getsignal(signal.SIGTERM)
    return handler if isinstance(handler, _HandlersCompose) else None


def write_tensorboard_summary(logger: TensorBoardLogger, summary: Any) -> None:
    """Writes a ready-made summary protocol buffer (the hparams plugin's session start) into the
    run's event file: the logger's ``SummaryWriter`` takes only values to summarise itself, its
    ``file_writer`` (undocumented) takes a summary as it is."""
    logger.experiment.file_writer.add_summary(summary)
