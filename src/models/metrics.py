"""What the classifier measures every step, kept on the device the model runs on: nothing here
reads a value back to the host per step, so a GPU never waits for the CPU to look at a number.
The host reads them at epoch ends and at the log interval only."""

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy


class WeightedMean(Metric):
    """The mean of a value over images: the loss, each batch's weighted by its size.

    torchmetrics' ``MeanMetric`` checks every update for NaNs with a Python ``if`` on a device
    tensor, a host sync every step, and copies a Python weight to the device; its
    ``nan_strategy="disable"`` drops the weights instead. Its state and its arithmetic are
    ``MeanMetric``'s, name for name (checkpoints written with it load) and bit for bit."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("mean_value", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.mean_value += value * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.mean_value / self.weight


def accuracy(num_classes: int, top_k: int = 1) -> MulticlassAccuracy:
    """Top-k accuracy over all images; without torchmetrics' argument checks, which count the
    targets' distinct values (a host sync on a GPU): the labels come from the data module."""
    return MulticlassAccuracy(
        num_classes, top_k=min(top_k, num_classes), average="micro", validate_args=False
    )


def stage_metrics(num_classes: int) -> MetricCollection:
    """loss, acc and acc_top5 of one stage."""
    return MetricCollection(
        {
            "loss": WeightedMean(),
            "acc": accuracy(num_classes),
            "acc_top5": accuracy(num_classes, 5),
        },
        compute_groups=False,
    )


def tencrop_metrics(num_classes: int) -> MetricCollection:
    """The accuracies of the softmax averaged over ten crops (paper, section 4.1)."""
    return MetricCollection(
        {"acc_tencrop": accuracy(num_classes), "acc_top5_tencrop": accuracy(num_classes, 5)},
        compute_groups=False,
    )


class Divergence:
    """Where the training loss first stopped being a finite number, kept on the device: updated
    every step without a host read, and read at the checks (``first``). Under DDP every process
    takes the largest step any of them recorded, so all stop together at the same check instead
    of one raising while the others wait in the gradients' all-reduce."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self.loss = torch.zeros((), device=loss.device)
        fresh = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(fresh, step, self.step)
        self.loss = torch.where(fresh, loss, self.loss)

    def first(self, reduce_max: object = None) -> tuple[int, float] | None:
        """(step, loss) where it happened first, or None; ``reduce_max`` (the strategy's
        ``reduce`` under DDP) makes every process agree."""
        if self.step is None:
            return None
        mine = int(self.step)  # the host reads, at a check only
        step = mine if reduce_max is None else int(reduce_max(self.step.clone(), reduce_op="max"))
        if step < 0:
            return None
        return step, float(self.loss) if mine >= 0 else float("nan")  # nan: another process
