"""Every Lightning callback of the project: what a researcher checks first, put into TensorBoard
(and W&B, MLflow) while the network trains, and the clocks that experiments and benchmarks read.

Each TensorBoard callback is an entry of ``conf/callbacks/default.yaml`` (off with
``callbacks.NAME=null``); the image callbacks act when a logger takes images (``src.trackers``),
the HPARAMS one when the trainer has a TensorBoardLogger; they draw on rank zero only, with the
drawings of ``src.experiments.figures``. Nothing here reads a device value back to the host
every step: on a GPU that would make the CPU wait for it.
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.tensorboard.summary import hparams
from torchmetrics.classification import MulticlassConfusionMatrix

from src.experiments.figures import (
    confusion_matrix_figure,
    figure_to_array,
    filter_grid,
    labelled_grid,
)
from src.models.nets import first_conv, towers
from src.trackers import image_loggers, log_image
from src.utils import ConfigError, UserError, flatten
from src.utils.lightning_compat import batches_in_epoch, write_tensorboard_summary

log = logging.getLogger(__name__)


def images_in(batch: Any) -> int:
    """The number of images of a batch (its labels' length: no read of the device)."""
    return len(batch[1])


def conv1(net: nn.Module) -> nn.Conv2d:
    """The layer that looks at the pixels: conv1 of every model preset."""
    conv = first_conv(net)
    if conv is None:
        raise ConfigError(
            f"callbacks.first_layer_filters: {type(net).__name__} has no Conv2d layer to show; "
            "switch it off with callbacks.first_layer_filters=null"
        )
    return conv


def find_tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class TrainingSamples(Callback):
    """Logs ``samples/train``: the first training batch the network receives (crops, flips and
    any other augmentation included), un-normalised, each image labelled with its class."""

    def __init__(self, max_images: int = 32, nrow: int = 8) -> None:
        self.max_images = max_images
        self.nrow = nrow
        self.logged = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # without a data module (loaders passed to fit) the preprocessing to undo is unknown
        if (
            self.logged
            or not image_loggers(trainer)
            or trainer.datamodule is None
            or not trainer.is_global_zero
        ):
            return
        self.logged = True
        images, targets = batch[0][: self.max_images], batch[1][: self.max_images]
        pixels = trainer.datamodule.transform.pixels(images.float())
        names = [pl_module.class_names[i] for i in targets.tolist()]
        fig = labelled_grid(pixels, names, nrow=self.nrow)
        log_image(trainer, "samples/train", figure_to_array(fig), dataformats="HWC")


class FirstLayerFilters(Callback):
    """Logs ``filters/conv1`` (see ``filter_grid``) when training starts and after every
    ``every_n_epochs`` epochs."""

    def __init__(self, every_n_epochs: int = 5, nrow: int = 16) -> None:
        if every_n_epochs < 1:
            raise ConfigError(
                f"callbacks.first_layer_filters.every_n_epochs={every_n_epochs} must be 1 or more"
            )
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    def log_filters(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not image_loggers(trainer) or not trainer.is_global_zero:
            return
        grid = filter_grid(conv1(pl_module.net).weight, towers(pl_module.net), self.nrow)
        log_image(trainer, "filters/conv1", grid)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_filters(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_filters(trainer, pl_module)


class ValidationConfusionMatrix(Callback):
    """Logs ``val/confusion_matrix`` after every validation epoch (not the sanity check).

    The logits are those ``validation_step`` returns, so validation runs no extra forward
    pass; the counts stay on the device and are summed over all processes under DDP.
    """

    def __init__(self) -> None:
        self.matrix: MulticlassConfusionMatrix | None = None
        self.counting = False

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.counting = bool(image_loggers(trainer)) and not trainer.sanity_checking
        if not self.counting:
            return
        if self.matrix is None:
            # without its argument checks, which count the labels' values (a GPU sync)
            classes = len(pl_module.class_names)
            self.matrix = MulticlassConfusionMatrix(classes, validate_args=False)
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.counting:
            self.matrix.update(outputs, batch[1])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.counting:
            return
        self.counting = False
        matrix = self.matrix.compute()
        if trainer.is_global_zero:
            acc = matrix.diagonal().sum() / matrix.sum().clamp_min(1)
            title = f"validation, epoch {trainer.current_epoch}: accuracy {acc:.3f}"
            fig = confusion_matrix_figure(matrix, pl_module.class_names, title)
            log_image(trainer, "val/confusion_matrix", figure_to_array(fig), dataformats="HWC")


class InterruptCheckpoint(Callback):
    """When a signal stops training (``src.cluster``): a checkpoint of the step just finished,
    written atomically over ``last.ckpt``, so ``ckpt_path=last`` and a requeued job continue
    from it, mid-epoch, loader position included.

    Not Lightning's ``OnExceptionCheckpoint``: that one also saves a diverged run's NaN weights
    and a step broken off by any error, deletes its file when a run ends, and makes every later
    ``fit`` without ``ckpt_path`` resume on its own, past this project's checks. A plain callback,
    not a ``Checkpoint``: runs with ``trainer.enable_checkpointing=false`` may keep it.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: Any) -> None:
        # Lightning raises SIGTERMException only between steps, in every process at once. Not
        # while testing: the model then holds the best epoch's weights, not the last.
        stopped = isinstance(exception, SIGTERMException) and not trainer.sanity_checking
        if not stopped or trainer.state.fn != TrainerFn.FITTING:
            return
        try:  # the loss is checked on the device at intervals: never save weights it broke
            getattr(pl_module, "check_finite", lambda: None)()
        except UserError as err:
            log.error("Stopped by a signal, not saved: %s", err)
            return
        start = time.perf_counter()
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.info(
                "Stopped by a signal: saved epoch %d (counting from 0), step %d, batch %d of the "
                "epoch, to %s in %.2f s",
                trainer.current_epoch, trainer.global_step,
                batches_in_epoch(trainer), self.path,
                time.perf_counter() - start,
            )  # fmt: skip


class Throughput(Callback):
    """Logs, at every training epoch's end, ``train/images_per_sec``: this process's training
    images per second over the epoch, data loading included, validation not (with several
    processes also ``train/images_per_sec_total``, all of them); and ``train/time``: the seconds
    of training so far.

    Not Lightning's ``ThroughputMonitor``: to time each batch it synchronises the GPU after every
    step, which a GPU run then pays every step. An epoch's wall time needs no synchronisation:
    the epoch ends with the metrics' reduction, which waits for the device anyway."""

    def __init__(self) -> None:
        self.time = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a resume in mid-epoch skips the epoch's start: its rate is that of the rest of it
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start, self.images, self.paused = time.perf_counter(), 0, 0.0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.images += images_in(batch)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.paused += time.perf_counter() - self.validation_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = time.perf_counter() - self.start - self.paused
        self.time += seconds
        rates = {"train/images_per_sec": self.images / seconds, "train/time": self.time}
        if trainer.world_size > 1:  # every process calls this hook: a collective is safe here
            total = trainer.strategy.reduce(torch.tensor(self.images / seconds), reduce_op="sum")
            rates["train/images_per_sec_total"] = float(total)
        pl_module.log_dict(rates, rank_zero_only=True)


class EpochClock(Callback):
    """Logs ``train/seconds`` at every epoch's end: wall-clock time since training began (after
    data preparation and the sanity check), validation included, so the time to a target error
    can be read beside the error curve. ``Throughput``'s ``train/time`` leaves validation out."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log("train/seconds", time.perf_counter() - self.start)


class HyperparametersWithMetrics(Callback):
    """Fills TensorBoard's HPARAMS tab: the hyper-parameters the run logged (``src.train`` logs
    its whole config), flattened to ``model.optimizer.lr`` and so on, less the ``ignore`` keys
    and groups (bookkeeping such as paths) and Hydra's ``_convert_``, ``_partial_`` and
    ``_recursive_`` flags.

    Only the session start is written, with the hyper-parameters: TensorBoard then pairs them
    with every scalar of the run at its last logged value (so the run's final metrics, and no
    placeholder ever enters a curve), and over a sweep it lists first the hyper-parameters
    that differ between the jobs. W&B and MLflow need no such step: the config that ``src.train``
    logs becomes their run's config or params, shown beside its metrics.
    """

    def __init__(self, ignore: Sequence[str] = ()) -> None:
        self.ignore = list(ignore)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = find_tensorboard(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        params = {
            k: v if isinstance(v, int | float | str) else str(v)
            for k, v in flatten(logger.hparams).items()
            if v is not None
            and not any(k == i or k.startswith(f"{i}.") for i in self.ignore)
            and not k.endswith(("._convert_", "._partial_", "._recursive_"))
        }
        _, session_start, _ = hparams(params, {})
        write_tensorboard_summary(logger, session_start)


class StepClock(Callback):
    """The time at the end of every training step, for the benchmark (``bench/benchmark.py``) to
    compare Lightning's steady rate with a plain loop's on the same steps: ``Throughput`` logs an
    epoch's rate, never the steps' own times."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter())


def resident_mb(pid: int | str = "self") -> float:
    """Memory of a process and all its live descendants (Linux ``/proc``), in MB, as
    proportional set size: a page shared by the main process and its forked loader workers is
    split between them, not counted once per process as in their resident sizes."""
    total, todo = 0.0, [str(pid)]
    while todo:
        proc = Path("/proc") / todo.pop()
        try:
            rollup = (proc / "smaps_rollup").read_text()
            total += int(rollup.split("\nPss:")[1].split()[0]) / 1024
            for task in (proc / "task").iterdir():
                todo += (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a worker that exited while being read
    return total


class ResidentMemory(Callback):
    """Logs ``memory/rss_mb`` (this process and its loader workers, proportional set size) and
    ``memory/peak_mb`` (peak resident size of this process) at every training epoch's end, for
    ``make soak`` (``bench/soak.py``) to see whether memory grows over epochs. Lightning's
    ``DeviceStatsMonitor`` reports the accelerator's memory (on the CPU, the whole machine's),
    not this process tree's. Linux only (``/proc``)."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import resource  # Unix only: imported here, so src.callbacks loads everywhere

        pl_module.log("memory/rss_mb", resident_mb())
        pl_module.log("memory/peak_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
