"""The four-layer network of the paper's Figure 1: its code base's CIFAR-10 net.

Three 5x5 convolutions of 32, 32 and 64 maps, each followed by 3x3 stride-2 max-pooling, then
one fully connected layer: small enough that activation functions, not capacity, decide how fast
it trains. Adaptive pooling to the 4x4 grid a 32-px image ends on lets larger images through.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from src.models.alexnet import check_dropout, check_widths, init_weights_, make_activation


class CNN4(nn.Module):
    """Conv-act-pool three times, then a linear classifier on a 4x4 grid of ``widths[-1]`` maps."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 32, 64),
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "paper",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_widths(widths, 3)
        check_dropout(dropout)
        layers: list[tuple[str, nn.Module]] = []
        for i, (c_in, c_out) in enumerate(
            zip((in_channels, *widths[:-1]), widths, strict=True), start=1
        ):
            layers += [
                (f"conv{i}", nn.Conv2d(c_in, c_out, 5, padding=2)),
                (f"act{i}", make_activation(activation)),
                # ceil_mode keeps the 32 -> 16 -> 8 -> 4 -> ... halving of the original net
                (f"pool{i}", nn.MaxPool2d(3, 2, ceil_mode=True)),
            ]
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1] * 16, num_classes)
        # With init=paper, every layer starts from N(0, 0.01) weights and zero biases,
        # whichever the activation: Figure 1 compares activations, nothing else.
        f = self.features
        init_weights_(init, [f.conv1, f.conv2, f.conv3, self.fc])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))
