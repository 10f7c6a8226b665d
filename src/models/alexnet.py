"""AlexNet (Krizhevsky et al., 2012) with every architectural choice of the paper as an argument.

The presets in ``conf/model/`` pick the paper's two-tower network, the single-tower variant most
libraries ship, and a half-width network that trains on one small GPU or a CPU.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from src.utils import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}
INITS = ("paper", "default")


def make_activation(name: str) -> nn.Module:
    """One activation module by name; unknown names fail with the list of choices."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.net.activation={name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def init_weights_(
    init: str,
    modules: Sequence[nn.Module],
    ones_bias: Sequence[nn.Module] = (),
    std: float | Sequence[float] = 0.01,
) -> None:
    """``paper`` (section 5): weights ~ N(0, 0.01), biases 1 where listed (so ReLUs start with
    positive inputs) and 0 elsewhere. ``default`` keeps the framework's initialisation. ``std``
    may give each module its own, where a net's published files did (Figure 1's)."""
    if init not in INITS:
        raise ConfigError(f"model.net.init={init!r} is not one of {list(INITS)}")
    stds = list(std) if isinstance(std, Sequence) else [std] * len(modules)
    if init == "paper":
        for m, s in zip(modules, stds, strict=True):
            nn.init.normal_(m.weight, mean=0.0, std=s)
            nn.init.constant_(m.bias, 1.0 if any(m is o for o in ones_bias) else 0.0)


def check_widths(widths: Sequence[int], count: int) -> None:
    if len(widths) != count or any(not isinstance(c, int) or c < 1 for c in widths):
        raise ConfigError(
            f"model.net.widths={list(widths)} needs {count} conv widths, each a whole number >= 1"
        )


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.net.dropout={dropout!r} must be at least 0 and below 1")


class AlexNet(nn.Module):
    """Five conv layers, three max-pools, three fully connected layers.

    ``groups`` applies to conv2, conv4 and conv5: the layers whose kernels in the paper only see
    the feature maps on their own GPU. Adaptive pooling to 6x6 lets any input of at least 63 px
    through (with the default 3/2 pooling).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        widths: Sequence[int] = (96, 256, 384, 384, 256),
        hidden: int = 4096,
        groups: int = 2,
        lrn: bool = True,
        pool_kernel: int = 3,
        pool_stride: int = 2,
        activation: str = "relu",
        dropout: float = 0.5,
        init: str = "paper",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_widths(widths, 5)
        c1, c2, c3, c4, c5 = widths
        if not isinstance(groups, int) or groups < 1 or any(c % groups for c in widths[1:]):
            # conv2, conv4, conv5 are grouped; conv3 reads conv2's output, so it must split too
            raise ConfigError(
                f"model.net.groups={groups!r} must be a whole number >= 1 that divides the widths "
                f"of conv2 to conv5 ({list(widths[1:])}); the paper's two towers are groups=2"
            )
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"model.net.hidden={hidden!r} must be a whole number of at least 1")
        check_dropout(dropout)
        if pool_kernel < 1 or pool_stride < 1:
            raise ConfigError(
                f"model.net.pool_kernel={pool_kernel} and model.net.pool_stride={pool_stride} must "
                "be at least 1 (the paper: 3 and 2)"
            )

        def block(i: int, conv: nn.Conv2d, norm: bool, pool: bool) -> list[tuple[str, nn.Module]]:
            layers = [(f"conv{i}", conv), (f"act{i}", make_activation(activation))]
            if norm and lrn:
                # size=5, alpha=1e-4: torch divides alpha by size, as the paper's own code does.
                layers.append((f"lrn{i}", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)))
            if pool:
                layers.append((f"pool{i}", nn.MaxPool2d(pool_kernel, pool_stride)))
            return layers

        self.features = nn.Sequential(
            OrderedDict(
                block(1, nn.Conv2d(in_channels, c1, 11, stride=4, padding=2), True, True)
                + block(2, nn.Conv2d(c1, c2, 5, padding=2, groups=groups), True, True)
                + block(3, nn.Conv2d(c2, c3, 3, padding=1), False, False)
                + block(4, nn.Conv2d(c3, c4, 3, padding=1, groups=groups), False, False)
                + block(5, nn.Conv2d(c4, c5, 3, padding=1, groups=groups), False, True)
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(c5 * 6 * 6, hidden),
                act6=make_activation(activation),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(hidden, hidden),
                act7=make_activation(activation),
                drop7=nn.Dropout(dropout),
                fc8=nn.Linear(hidden, num_classes),
            )
        )
        f, c = self.features, self.classifier
        init_weights_(
            init,
            [f.conv1, f.conv2, f.conv3, f.conv4, f.conv5, c.fc6, c.fc7, c.fc8],
            ones_bias=[f.conv2, f.conv4, f.conv5, c.fc6, c.fc7],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
