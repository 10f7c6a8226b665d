"""The LightningModule: any classifier network, cross-entropy, SGD, per-stage metrics."""

import logging
import math
import os
import shutil
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from hydra.utils import instantiate
from lightning import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MaxMetric

from src.checkpoints import stamp
from src.data.batch_transform import CENTRE_CROP
from src.models.metrics import Divergence, stage_metrics, tencrop_metrics
from src.models.nets import build_net, freeze_modules, lr_groups
from src.models.pretrained import (
    check_torchvision_layout,
    load_torchvision_alexnet,
    read_torchvision_state_dict,
)
from src.utils import ConfigError, UserError
from src.utils.lightning_compat import trainer_of
from src.utils.randomness import seed_process, set_random_states

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


def compile_backend(compile: bool | str) -> str:
    """``model.compile``: true is torch's default backend, a name that backend."""
    return "inductor" if compile is True else str(compile)


def check_compile(compile: bool | str) -> None:
    """Before any work: ``model.compile`` names a backend torch has, and the default one finds
    what it builds with (a C compiler and Python's headers), which minimal GPU images lack."""
    if compile is False or compile is None:
        return
    if not isinstance(compile, bool | str):
        raise ConfigError(f"model.compile={compile!r} must be true, false or a backend's name")
    import torch._dynamo  # the backends' list; loaded only where a run compiles

    backend = compile_backend(compile)
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        known = torch._dynamo.list_backends(exclude_tags=())
        raise ConfigError(f"model.compile={compile!r} is not one of torch's backends {known}")
    headers = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    compiler = any(shutil.which(c) for c in (os.environ.get("CC"), "gcc", "cc", "clang") if c)
    if backend == "inductor" and not (headers and compiler):
        raise ConfigError(
            "torch.compile needs gcc and Python headers: install them (e.g. apt install gcc "
            "python3-dev) or set model.compile=false"
        )


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
        compile: bool | str = False,
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
        check_compile(compile)
        self.compiled = False
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
            setattr(self, f"{stage}_metrics", stage_metrics(n))
        # saved in checkpoints: a run stopped mid-epoch resumes the epoch's running totals
        self.train_metrics.persistent(True)
        # Ten-crop testing (section 4.1): logged beside the centre crop's metrics of the same pass.
        for stage in STAGES[1:]:
            setattr(self, f"{stage}_tencrop_metrics", tencrop_metrics(n))
        self.divergence = Divergence()
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
        if self.hparams.compile and not self.compiled:
            # In place: unlike torch.compile(net), the state_dict keys keep their names (no
            # "_orig_mod." prefix), so checkpoints load into an uncompiled network.
            self.net.compile(backend=compile_backend(self.hparams.compile))
            self.compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            # one graph for every batch size (the last, partial batch, ten crops): a run
            # compiles a training and an evaluation graph, not one per size
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.net(x)

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        # a no-op for the cache path's batches, which are made channels-last already
        if self.hparams.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss, and the logits of the centre crop, of one batch; the stage's metrics
        updated on the device."""
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
        return loss, logits.detach()

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

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        # on the device; read at the log interval, before validation and at the epoch's end,
        # always before a checkpoint is written (check_finite)
        self.divergence.update(loss, self.global_step)
        trainer = trainer_of(self)  # None where a step is taken by hand, without a Trainer
        if trainer is not None and (batch_idx + 1) % trainer.log_every_n_steps == 0:
            self.check_finite()
        return loss

    def check_finite(self) -> None:
        """Stop, on every process at once, where the training loss stopped being finite."""
        strategy = self.trainer.strategy
        found = self.divergence.first(strategy.reduce if self.trainer.world_size > 1 else None)
        if found is None:
            return
        step, loss = found
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise DivergedError(
            f"Training diverged: the loss is {loss} at epoch {self.current_epoch}, step {step}. "
            "The usual cause is a learning rate too high for this network and input scale (now "
            f"{lr:g}); lower model.optimizer.lr."
        )

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING:  # before validation and its checkpoint
            self.check_finite()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        """The logits, which callbacks read (the confusion matrix) without a pass of their own."""
        return self._step(batch, "val")[1]

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        return self._step(batch, "test")[1]

    def on_train_epoch_end(self) -> None:
        self.check_finite()
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
        keys = ("random_states", "random_states_of_ranks", "lr_scheduler")
        self._resumed = {k: checkpoint[k] for k in keys if k in checkpoint}

    def on_fit_start(self) -> None:
        seed_process(self.global_rank)  # each process its own stream of draws under DDP

    def on_train_start(self) -> None:
        """A resumed process takes back its own generators; one that did not exist then (more
        devices now) keeps the stream its rank gives it."""
        rank = self.global_rank
        of_ranks = self._resumed.pop("random_states_of_ranks", None) or []
        states = self._resumed.pop("random_states", None)
        own = of_ranks[rank] if rank < len(of_ranks) else states if rank == 0 else None
        if own is not None:
            set_random_states(own)

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
