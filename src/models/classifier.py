"""The LightningModule: any classifier network, cross-entropy, SGD, per-stage metrics."""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from hydra.utils import instantiate
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from src.checkpoints import set_random_states, stamp
from src.data.batch_transform import CENTRE_CROP
from src.models.nets import build_net, trainable_modules
from src.models.pretrained import (
    check_torchvision_layout,
    load_torchvision_alexnet,
    read_torchvision_state_dict,
)
from src.utils import ConfigError, UserError

STAGES = ("train", "val", "test")
log = logging.getLogger(__name__)


class DivergedError(UserError):
    """The training loss stopped being a finite number."""


def check_optimizer(optimizer: Callable[..., torch.optim.Optimizer] | None) -> None:
    """Hyper-parameters the optimizer would reject deep inside training, named by config key."""
    settings = optimizer.keywords if isinstance(optimizer, partial) else {}
    for key in ("lr", "momentum", "weight_decay"):
        value = settings.get(key)
        if value is None:
            continue
        low_ok = value > 0 if key == "lr" else value >= 0
        if isinstance(value, bool) or not math.isfinite(value) or not low_ok:
            bound = "above 0" if key == "lr" else "0 or more"
            raise ConfigError(f"model.optimizer.{key}={value!r} must be a finite number {bound}")


def check_module_names(key: str, names: Sequence[str], net: nn.Module) -> None:
    valid = trainable_modules(net)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"model.{key} names no such module: {unknown}; valid names: {valid}")


def freeze_modules(net: nn.Module, names: Sequence[str]) -> None:
    """Frozen parameters get no gradient and stay out of the optimizer, so neither weight decay
    nor momentum moves them."""
    check_module_names("freeze", names, net)
    for name in names:
        net.get_submodule(name).requires_grad_(False)
    if not any(p.requires_grad for p in net.parameters()):
        raise ConfigError(f"model.freeze={list(names)} freezes every parameter: nothing to train")


def lr_groups(net: nn.Module, lr_mult: Mapping[str, float]) -> dict[str, list[str]]:
    """The trainable parameters' names by the ``lr_mult`` entry that covers them (the most
    specific one: ``classifier.fc8`` before ``classifier``), ``""`` for those at the base rate."""
    check_module_names("lr_mult", list(lr_mult), net)
    for name, mult in lr_mult.items():
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not 0 < mult < math.inf:
            raise ConfigError(
                f"model.lr_mult.{name}={mult!r} must be a finite number above 0 (to keep a "
                "module as it is, put it in model.freeze)"
            )
    groups: dict[str, list[str]] = {"": [], **{name: [] for name in lr_mult}}
    for pname, p in net.named_parameters():
        if p.requires_grad:
            owners = [n for n in lr_mult if pname.startswith(f"{n}.")]
            groups[max(owners, key=len, default="")].append(pname)
    frozen = [name for name, params in groups.items() if name and not params]
    if frozen:
        raise ConfigError(f"model.lr_mult names modules that model.freeze freezes: {frozen}")
    return groups


class ImageClassifier(LightningModule):
    """Wraps the network of ``net`` (a config node, ``{_target_: ..., its arguments}``), built
    with ``num_classes=len(class_names)``, so a checkpoint alone rebuilds the model and knows its
    classes (``src/models/nets.py``: what a network must be).

    ``optimizer`` and ``scheduler`` are config nodes of partial constructors (Hydra
    ``_partial_``); they are not saved as hyper-parameters, so loading a checkpoint for
    evaluation needs neither.

    ``pretrained`` (a torchvision AlexNet state dict file, or ``imagenet``) and a network's own
    weights (``model.net.weights`` of torchvision's networks) are only a record here:
    ``load_pretrained`` reads them when a training run starts, so a checkpoint never needs the
    file. ``freeze`` and ``lr_mult`` name modules of the network (``features``,
    ``classifier.fc8``); ``bias_lr_mult`` multiplies the rate of every bias on top (cuda-convnet's
    epsB / epsW).

    ``compile`` and ``channels_last`` are GPU switches that only the Trainer applies (in
    ``configure_model``): a checkpoint loads and predicts without them.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_monitor: str = "val/loss",
        max_lr_drops: int | None = None,
        compile: bool = False,
        channels_last: bool = False,
        pretrained: str | None = None,
        freeze: Sequence[str] = (),
        lr_mult: Mapping[str, float] | None = None,
        bias_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        # one empty value each, as checkpoints record them (null on the command line is unset)
        self.hparams.update(freeze=list(freeze or []), lr_mult=dict(lr_mult or {}))
        self.optimizer_factory = instantiate(optimizer) if optimizer else None
        check_optimizer(self.optimizer_factory)
        if pretrained is not None:
            check_torchvision_layout(net)
        self.class_names = list(class_names)
        self.net: nn.Module = build_net(net, len(self.class_names))
        freeze_modules(self.net, self.hparams.freeze)
        self.lr_mult = self.hparams.lr_mult
        self.lr_groups = lr_groups(self.net, self.lr_mult)
        mult = bias_lr_mult
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not 0 < mult < math.inf:
            raise ConfigError(
                f"model.bias_lr_mult={mult!r} must be a finite number above 0 (1: biases at "
                "the weights' rate)"
            )
        self.bias_lr_mult = float(mult)
        self.scheduler_factory = instantiate(scheduler) if scheduler else None
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
        # saved in checkpoints: a run stopped mid-epoch resumes the epoch's running totals
        self.train_metrics.persistent(True)
        # Ten-crop testing (section 4.1): logged beside the centre crop's metrics of the same pass.
        for stage in STAGES[1:]:
            tencrop = MetricCollection(
                {
                    "acc_tencrop": MulticlassAccuracy(n, average="micro"),
                    "acc_top5_tencrop": MulticlassAccuracy(n, top_k=min(5, n), average="micro"),
                },
                compute_groups=False,
            )
            setattr(self, f"{stage}_tencrop_metrics", tencrop)
        # saved in checkpoints, so a resumed run's best covers the epochs before the interruption
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        self._resumed: dict[str, Any] = {}
        self.lr_scheduler: Any = None

    def load_pretrained(self) -> None:
        """Read ``pretrained``, and the network's own weights, into the network: once, when a
        run starts from scratch (not on resume, whose checkpoint holds the weights)."""
        source = self.hparams.pretrained
        if source is not None:
            load_torchvision_alexnet(self.net, read_torchvision_state_dict(source), source)
        if hasattr(self.net, "load_pretrained"):
            self.net.load_pretrained()

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
            # Ten crops per image (paper, section 4.1): the softmax averaged over the crops is
            # scored apart; the usual metrics stay those of the centre crop, so they do not
            # change when ten-crop testing is switched on.
            b, n = x.shape[:2]
            crops = self(self._net_input(x.flatten(0, 1))).view(b, n, -1)
            probs = crops.detach().softmax(-1).mean(1)
            getattr(self, f"{stage}_tencrop_metrics").update(probs, y)
            logits = crops[:, CENTRE_CROP]
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
        tencrop = getattr(self, f"{stage}_tencrop_metrics", None)
        if tencrop is not None and tencrop["acc_tencrop"].update_count:
            values |= {f"{stage}/{k}": v for k, v in tencrop.compute().items()}
            tencrop.reset()
        self.log_dict(values, sync_dist=True)
        return values

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        # One device sync per step: stops a diverged run at once, before it writes a checkpoint.
        if not torch.isfinite(loss):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise DivergedError(
                f"Training diverged: the loss is {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}. The usual cause is a learning rate too high for this "
                f"network and input scale (now {lr:g}); lower model.optimizer.lr."
            )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        self._step_scheduler()

    def _step_scheduler(self) -> None:
        """Once per epoch, after validation and before the epoch's checkpoint is written.

        Lightning would step it after the checkpoint, and skip that step on resume (it does not
        save the monitored value): a resumed run's learning rate would drop an epoch late.
        """
        if self.lr_scheduler is None:
            return
        if not isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step()
            return
        monitor = self.hparams.scheduler_monitor
        if monitor not in self.trainer.callback_metrics:
            raise ConfigError(
                f"model.scheduler_monitor={monitor!r} was not logged this epoch; logged: "
                f"{sorted(self.trainer.callback_metrics)}"
            )
        self.lr_scheduler.step(self.trainer.callback_metrics[monitor])
        limit = self.hparams.max_lr_drops
        if limit is not None and self.lr_drops() > limit:
            # section 5: the rate was cut three times; the next plateau ended training
            log.info(
                "Stopping after epoch %d: %s stalled again after %d learning-rate cuts "
                "(model.max_lr_drops)", self.current_epoch, monitor, limit,
            )  # fmt: skip
            self.trainer.should_stop = True

    def lr_drops(self) -> int:
        """How many times the plateau scheduler has cut the configured rate, read from the rate
        itself (so a resumed run counts the cuts made before it). Every group's ``lr_mult`` is
        its whole multiple, ``bias_lr_mult`` included, so any group tells."""
        group = self.lr_scheduler.optimizer.param_groups[0]
        configured = self.optimizer_factory.keywords["lr"] * group.get("lr_mult", 1)
        current = group["lr"]
        return round(math.log(configured / current) / -math.log(self.lr_scheduler.factor))

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
        if self.val_acc_best.update_count:
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stamp(checkpoint, self)  # src/checkpoints.py: what a checkpoint carries
        if self.lr_scheduler is not None:
            checkpoint["lr_scheduler"] = self.lr_scheduler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied later: the scheduler does not exist yet, and the sanity check would draw.
        self._resumed = {
            k: checkpoint[k] for k in ("random_states", "lr_scheduler") if k in checkpoint
        }

    def on_train_start(self) -> None:
        if "random_states" in self._resumed:
            set_random_states(self._resumed.pop("random_states"))

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError(
                "model.optimizer is not set: training needs one, e.g. model.optimizer.lr=0.01 "
                "with the optimizer of conf/model/alexnet.yaml"
            )
        optimizer = self.optimizer_factory(params=self.param_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_mult", 1)
        if self.scheduler_factory is not None:
            self.lr_scheduler = self.scheduler_factory(optimizer=optimizer)
            if "lr_scheduler" in self._resumed:
                self.lr_scheduler.load_state_dict(self._resumed.pop("lr_scheduler"))
        return optimizer

    def param_groups(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """The trainable parameters; with ``lr_mult``, one group per multiple, named after its
        module (``base`` for the rest), so LearningRateMonitor logs ``lr-SGD/classifier.fc8``.
        With ``bias_lr_mult``, each splits its biases off into ``<name>.bias`` at that multiple
        of its own (``base.bias``, ``fc.bias``). With neither, one plain list, as checkpoints
        from before both hold it."""
        params = dict(self.net.named_parameters())
        if not self.lr_mult and self.bias_lr_mult == 1:
            return [params[name] for name in self.lr_groups[""]]
        groups = []
        for module, names in self.lr_groups.items():
            mult, name = self.lr_mult.get(module, 1.0), module or "base"
            biases = [p for p in names if p.endswith(".bias")] if self.bias_lr_mult != 1 else []
            weights = [p for p in names if p not in biases]
            for label, members, m in (
                (name, weights, mult), (f"{name}.bias", biases, mult * self.bias_lr_mult)
            ):  # fmt: skip
                if members:
                    groups.append(
                        {"params": [params[p] for p in members], "name": label, "lr_mult": m}
                    )
        return groups
