"""The four-layer network of the paper's Figure 1: cuda-convnet's ``layers-18pct`` CIFAR-10 net.

As published (``example-layers/layers-18pct.cfg`` with ``layer-params-18pct.cfg``), the defaults
here and ``conf/model/cnn4.yaml``::

    conv1 32 maps 5x5 pad 2, N(0, 1e-4) -> max-pool 3/2 -> relu -> rnorm 3
    conv2 32 maps 5x5 pad 2, N(0, 0.01) -> relu -> avg-pool 3/2 -> rnorm 3
    conv3 64 maps 5x5 pad 2, N(0, 0.01) -> relu -> avg-pool 3/2
    fc10, N(0, 0.01) -> softmax, logistic-regression cost; every bias starts at 0

How cuda-convnet's settings map onto this code base:

- Pooling: with ``outputsX=0`` cuda-convnet covers the whole map with windows that may run off
  its far edge, clipped there (an average divides by the window's part inside the map). torch's
  ``ceil_mode=True`` without padding has the same windows and divisors: 32 -> 16 -> 8 -> 4.
- ``rnorm``: ``WithinMapNorm`` below.
- Learning rates: cuda-convnet scales each summed gradient by epsW / (batch size), so epsW
  applies to the batch-mean gradient, and its momentum step (inc = mom inc - eps grad - wc eps w)
  is torch's SGD with ``lr = epsW`` and ``weight_decay = wc``. So epsW 0.001 is
  ``model.optimizer.lr=0.001`` on the mean cross-entropy, not 0.128, and epsB 0.002 is
  ``model.bias_lr_mult=2`` (src/models/classifier.py).

Not reproduced: the per-layer weight decay (wc 0.004 on conv1-3, 1 on fc10, none on biases: here
one ``model.optimizer.weight_decay``, which torch applies to biases too; 0 as in Figure 1);
``partialSum``, a GPU work split of the weight-gradient sum that changes only float rounding;
the adaptive average pooling to 4x4 before fc10, added so larger images pass (the identity at
32 px); cuda-convnet's random numbers and GPU arithmetic.
"""

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from src.models.alexnet import check_dropout, check_widths, init_weights_, make_activation
from src.utils import ConfigError

POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
# The net this code base had before it followed the published file (max-pooling after each
# activation, no rnorm, N(0, 0.01) everywhere): what a checkpoint without these keys was trained
# with (src/checkpoints.py fills them in), and conf/model/cnn4_legacy.yaml.
LEGACY: dict[str, Any] = {
    "init_std": [0.01, 0.01, 0.01, 0.01],
    "pools": ["max", "max", "max"],
    "act_after_pool": [False, False, False],
    "rnorm": False,
    "rnorm_size": 3,
    "rnorm_scale": 5e-5,
    "rnorm_pow": 0.75,
}


class WithinMapNorm(nn.Module):
    """cuda-convnet's ``rnorm`` layer: each unit divided by ``(1 + scale / size^2 * S)^pow``, S
    the sum of squares over the size x size window of its own map that starts ``size // 2``
    before it. Not ``nn.LocalResponseNorm``, which normalises across maps (``cmrnorm``).

    At the border cuda-convnet clips the window to the map, sums only the squares inside and
    still divides ``scale`` by size^2: zero padding and an average over the full window give
    exactly that."""

    def __init__(self, size: int = 3, scale: float = 5e-5, power: float = 0.75) -> None:
        super().__init__()
        self.size, self.scale, self.power = size, scale, power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.size // 2, (self.size - 1) // 2
        squares = F.pad(x * x, (before, after, before, after))
        mean = F.avg_pool2d(squares, self.size, stride=1)
        return x * (1 + self.scale * mean).pow(-self.power)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, pow={self.power}"


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_cnn4(
    init_std: Sequence[float],
    pools: Sequence[str],
    act_after_pool: Sequence[bool],
    rnorm_size: int,
    rnorm_scale: float,
    rnorm_pow: float,
) -> None:
    """Each list names its config key: a wrong length or value fails before any layer is built."""
    if len(init_std) != 4 or any(not _finite(s) or s <= 0 for s in init_std):
        raise ConfigError(
            f"model.net.init_std={list(init_std)} needs 4 standard deviations above 0 (conv1, "
            "conv2, conv3, fc; published: 0.0001, 0.01, 0.01, 0.01)"
        )
    if len(pools) != 3 or any(p not in POOLS for p in pools):
        raise ConfigError(
            f"model.net.pools={list(pools)} needs 3 values, each one of {list(POOLS)}"
        )
    if len(act_after_pool) != 3 or any(not isinstance(a, bool) for a in act_after_pool):
        raise ConfigError(f"model.net.act_after_pool={list(act_after_pool)} needs 3 true/false")
    if isinstance(rnorm_size, bool) or not isinstance(rnorm_size, int) or rnorm_size < 1:
        raise ConfigError(f"model.net.rnorm_size={rnorm_size!r} must be a whole number >= 1")
    for key, value in (("rnorm_scale", rnorm_scale), ("rnorm_pow", rnorm_pow)):
        if not _finite(value) or value < 0:
            raise ConfigError(f"model.{key}={value!r} must be a finite number, 0 or more")


class CNN4(nn.Module):
    """Three conv blocks (conv, activation and pooling in either order, rnorm after the first two),
    then a linear classifier on a 4x4 grid of ``widths[-1]`` maps.

    ``init="paper"``: weights N(0, ``init_std``) per layer (conv1, conv2, conv3, fc), biases 0,
    whichever the activation; ``"default"``: the framework's. ``act_after_pool`` puts a block's
    activation after its pooling, as pool1's ``neuron=relu`` does (for max-pooling and a rising
    activation the output is the same, on a quarter of the units). ``rnorm`` switches both
    ``WithinMapNorm`` layers, after pool1 and pool2.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 32, 64),
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "paper",
        init_std: Sequence[float] = (1e-4, 0.01, 0.01, 0.01),
        pools: Sequence[str] = ("max", "avg", "avg"),
        act_after_pool: Sequence[bool] = (True, False, False),
        rnorm: bool = True,
        rnorm_size: int = 3,
        rnorm_scale: float = 5e-5,
        rnorm_pow: float = 0.75,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_widths(widths, 3)
        check_dropout(dropout)
        _check_cnn4(init_std, pools, act_after_pool, rnorm_size, rnorm_scale, rnorm_pow)
        layers: list[tuple[str, nn.Module]] = []
        for i, (c_in, c_out) in enumerate(
            zip((in_channels, *widths[:-1]), widths, strict=True), start=1
        ):
            # ceil_mode: cuda-convnet's pooling arithmetic (module docstring)
            pool = (f"pool{i}", POOLS[pools[i - 1]](3, 2, ceil_mode=True))
            act = (f"act{i}", make_activation(activation))
            layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, 5, padding=2))]
            layers += [pool, act] if act_after_pool[i - 1] else [act, pool]
            if rnorm and i < 3:
                layers.append((f"rnorm{i}", WithinMapNorm(rnorm_size, rnorm_scale, rnorm_pow)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1] * 16, num_classes)
        f = self.features
        init_weights_(init, [f.conv1, f.conv2, f.conv3, self.fc], std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))
