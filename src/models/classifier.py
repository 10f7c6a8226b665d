"""The LightningModule: any classifier network, cross-entropy, SGD, per-stage metrics."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from hydra.utils import get_class
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

STAGES = ("train", "val", "test")


class ImageClassifier(LightningModule):
    """Wraps the network named by ``arch``, built with ``num_classes=len(class_names)`` and the
    remaining keyword arguments, so a checkpoint alone rebuilds the model and knows its classes.

    Optimizer and scheduler are partial constructors (Hydra ``_partial_``); they are not saved as
    hyper-parameters, so loading a checkpoint for evaluation needs neither.

    ``compile`` and ``channels_last`` are GPU switches that only the Trainer applies (in
    ``configure_model``): a checkpoint loads and predicts without them.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        arch: str = "src.models.alexnet.AlexNet",
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        compile: bool = False,
        channels_last: bool = False,
        **arch_kwargs: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.class_names = list(class_names)
        self.net: nn.Module = get_class(arch)(num_classes=len(self.class_names), **arch_kwargs)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        n = len(self.class_names)
        for stage in STAGES:
            metrics = MetricCollection(
                {
                    "loss": MeanMetric(),
                    "acc": MulticlassAccuracy(n, average="micro"),
                    "acc_top5": MulticlassAccuracy(n, top_k=min(5, n), average="micro"),
                },
                compute_groups=False,
            )
            setattr(self, f"{stage}_metrics", metrics)
        self.val_acc_best = MaxMetric()

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            # In place: unlike torch.compile(net), the state_dict keys keep their names (no
            # "_orig_mod." prefix), so checkpoints load into an uncompiled network.
            self.net.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        # a no-op for the cache path's batches, which are made channels-last already
        if self.hparams.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        if x.ndim == 5:
            # Ten crops per image (paper, section 4.1): average the softmax over the crops.
            b, n = x.shape[:2]
            probs = self(self._net_input(x.flatten(0, 1))).softmax(-1).view(b, n, -1).mean(1)
            logits = probs.clamp_min(1e-12).log()
        else:
            logits = self(self._net_input(x))
        loss = F.cross_entropy(logits, y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics["loss"].update(loss.detach(), weight=y.numel())
        metrics["acc"].update(logits.detach(), y)
        metrics["acc_top5"].update(logits.detach(), y)
        return loss

    def _log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = getattr(self, f"{stage}_metrics")
        values = {f"{stage}/{k}": v for k, v in metrics.compute().items()}
        values[f"{stage}/error"] = 1.0 - values[f"{stage}/acc"]
        metrics.reset()
        self.log_dict(values, sync_dist=True)
        return values

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
        if self.val_acc_best.update_count:
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("model.optimizer is not set: training needs an optimizer config")
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.scheduler_monitor},
        }


def load_classifier(path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """The model of a training checkpoint, in eval mode on the CPU, and the raw checkpoint (which
    also holds the data module's preprocessing settings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint '{path}' not found. Training writes them to "
            "logs/train/runs/<time>/checkpoints/ (best: epoch_NNN.ckpt, latest: last.ckpt)."
        )
    # Our own checkpoints hold plain hyper-parameters next to the weights.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"'{path}' is not a checkpoint written by src.train")
    model = ImageClassifier(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
