"""What a researcher checks first, put into TensorBoard while the network trains.

Each callback is an entry of ``conf/callbacks/default.yaml`` (off with ``callbacks.NAME=null``).
The image and hparams callbacks act only when the trainer has a TensorBoardLogger and draw on
rank zero only; images/s is logged like any metric, to every logger. The drawing functions are
public so notebooks and ``src.experiments.figures`` reuse them.
"""

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.utils.tensorboard.summary import hparams
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid


def find_tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def unnormalise(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], input_scale: str
) -> torch.Tensor:
    """Network inputs back to displayable 0-1 pixels: undoes ``(x - mean) / std`` on the 0-1
    scale (``standardised``) or ``x * 255 - mean * 255`` (``raw``); ``mean_image`` inputs are
    shown as ``raw`` ones, ``mean`` standing in for the mean image, whose place in a crop is
    not known here."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    pixel_scale = input_scale in ("raw", "mean_image")
    pixels = images / 255 + mean_t if pixel_scale else images * std_t + mean_t
    return pixels.clamp(0, 1)


def figure_to_array(fig: Figure) -> np.ndarray:
    """The figure rendered as an (H, W, 3) uint8 array, without pyplot."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def labelled_grid(
    images: torch.Tensor, labels: Sequence[str], nrow: int = 8, min_cell: int = 96
) -> Figure:
    """0-1 images in a grid (``make_grid``), each with its label in the top-left corner, at
    least ``min_cell`` pixels per image so that labels fit on small inputs."""
    padding = 2
    grid = make_grid(images.cpu(), nrow=nrow, padding=padding, pad_value=1.0)
    cell_h, cell_w = images.shape[-2] + padding, images.shape[-1] + padding
    zoom = max(1.0, min_cell / images.shape[-1])
    dpi = 100
    fig = Figure(figsize=(grid.shape[2] * zoom / dpi, grid.shape[1] * zoom / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    for i, label in enumerate(labels):
        row, col = divmod(i, nrow)
        ax.text(
            col * cell_w + padding + 1,
            row * cell_h + padding + 1,
            label,
            va="top",
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
        )
    return fig


def first_conv(net: nn.Module) -> nn.Conv2d:
    """The layer that looks at the pixels: conv1 of every model preset."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(net).__name__} has no Conv2d layer to show filters of")
    return conv


def filter_grid(weight: torch.Tensor, groups: int = 1, nrow: int = 16) -> torch.Tensor:
    """First-layer kernels as a (3, H, W) 0-1 image like the paper's Figure 3: each kernel
    scaled to its own min-max, on white. With ``groups=2`` the first and the last half of the
    kernels (read by the first and the second tower's conv2) are two blocks, one kernel's height
    apart; kernels are enlarged to about 44 px."""
    weight = weight.detach().float().cpu()
    size = weight.shape[-1]
    blocks = [
        make_grid(half, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=1.0)
        for half in weight.chunk(groups)
    ]
    gap = torch.ones(3, size, blocks[0].shape[2])
    grid = torch.cat([part for block in blocks for part in (gap, block)][1:], dim=1)
    scale = max(1, 44 // size)
    return grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def confusion_matrix_figure(
    matrix: torch.Tensor, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Counts of true (rows) against predicted (columns) classes; with up to 10 classes every
    cell shows its count (the numbers cost as much as the rest of the drawing), with up to 50
    the axes name every class."""
    counts = matrix.cpu().numpy()
    n = len(class_names)
    side = min(max(4.0, 0.4 * n + 1.5), 14.0)
    fig = Figure(figsize=(side, side), dpi=80)
    # fixed margins: a constrained layout costs about as much as the drawing, every epoch
    margin = 1.2 / side
    fig.subplots_adjust(left=margin, bottom=margin, right=0.98, top=1 - 0.5 / side)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if n <= 50:
        ticks = range(n)
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=8)
        ax.set_yticks(ticks, class_names, fontsize=8)
    if n <= 10:
        dark = counts.max() / 2
        for (row, col), count in np.ndenumerate(counts):
            if count:
                color = "white" if count > dark else "black"
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    return fig


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
        logger = find_tensorboard(trainer)
        # without a data module (loaders passed to fit) the preprocessing to undo is unknown
        if (
            self.logged
            or logger is None
            or trainer.datamodule is None
            or not trainer.is_global_zero
        ):
            return
        self.logged = True
        images, targets = batch[0][: self.max_images], batch[1][: self.max_images]
        data = trainer.datamodule.hparams
        pixels = unnormalise(images.float(), data.mean, data.std, data.input_scale)
        names = [pl_module.class_names[i] for i in targets.tolist()]
        fig = labelled_grid(pixels, names, nrow=self.nrow)
        logger.experiment.add_image(
            "samples/train", figure_to_array(fig), trainer.global_step, dataformats="HWC"
        )


class FirstLayerFilters(Callback):
    """Logs ``filters/conv1`` (see ``filter_grid``) when training starts and after every
    ``every_n_epochs`` epochs."""

    def __init__(self, every_n_epochs: int = 5, nrow: int = 16) -> None:
        if every_n_epochs < 1:
            raise ValueError(
                f"callbacks.first_layer_filters.every_n_epochs={every_n_epochs} must be 1 or more"
            )
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    def log_filters(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = find_tensorboard(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        weight = first_conv(pl_module.net).weight
        grid = filter_grid(weight, pl_module.hparams.get("groups") or 1, self.nrow)
        logger.experiment.add_image("filters/conv1", grid, trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_filters(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_filters(trainer, pl_module)


class ValidationConfusionMatrix(Callback):
    """Logs ``val/confusion_matrix`` after every validation epoch (not the sanity check).

    The network's outputs are read with a forward hook during validation, so validation runs
    no extra forward pass; the counts are summed over all processes under DDP.
    """

    def __init__(self) -> None:
        self.matrix: MulticlassConfusionMatrix | None = None
        self.logits: torch.Tensor | None = None
        self.hook: torch.utils.hooks.RemovableHandle | None = None

    def active(self, trainer: Trainer) -> bool:
        return find_tensorboard(trainer) is not None and not trainer.sanity_checking

    def keep_logits(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.logits = output.detach()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active(trainer):
            return
        if self.matrix is None:
            self.matrix = MulticlassConfusionMatrix(len(pl_module.class_names))
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()
        # on the network, not the LightningModule: under DDP Lightning routes validation_step
        # itself through the module's forward
        self.hook = pl_module.net.register_forward_hook(self.keep_logits)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.hook is not None:
            self.matrix.update(self.logits, batch[1])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.hook is None:
            return
        self.hook.remove()
        self.hook = None
        matrix = self.matrix.compute()
        if trainer.is_global_zero:
            acc = matrix.diagonal().sum() / matrix.sum().clamp_min(1)
            title = f"validation, epoch {trainer.current_epoch}: accuracy {acc:.3f}"
            fig = confusion_matrix_figure(matrix, pl_module.class_names, title)
            find_tensorboard(trainer).experiment.add_image(
                "val/confusion_matrix", figure_to_array(fig), trainer.global_step, dataformats="HWC"
            )


class ImagesPerSecond(Callback):
    """Logs ``train/images_per_second`` per epoch: training images over the time from the
    epoch's start to its last batch (data loading included, validation not), for all processes:
    rank zero's rate times their number, as each gets an equal share of the epoch. Not
    synchronised: the progress bar reads epoch metrics on rank zero alone, so a synchronised
    value logged by a callback would leave rank zero waiting for the others there.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.images = 0
        self.start = self.last_batch_end = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, _: int
    ) -> None:
        self.images += len(batch[1])
        self.last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = self.last_batch_end - self.start
        if self.images and seconds > 0:
            rate = self.images / seconds * trainer.world_size
            pl_module.log("train/images_per_second", rate, rank_zero_only=True)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"optimizer": {"lr": 0.01}}}`` -> ``{"model.optimizer.lr": 0.01}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class HyperparametersWithMetrics(Callback):
    """Fills TensorBoard's HPARAMS tab: the hyper-parameters the run logged (``src.train`` logs
    its whole config), flattened to ``model.optimizer.lr`` and so on, less the ``ignore`` keys
    and groups (bookkeeping such as paths) and Hydra's ``_convert_``/``_partial_`` flags.

    Only the session start is written, with the hyper-parameters: TensorBoard then pairs them
    with every scalar of the run at its last logged value (so the run's final metrics, and no
    placeholder ever enters a curve), and over a sweep it lists first the hyper-parameters
    that differ between the jobs.
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
            and not k.endswith(("._convert_", "._partial_"))
        }
        _, session_start, _ = hparams(params, {})
        logger.experiment.file_writer.add_summary(session_start)
