"""CIFAR ResNet-18: 3x3 stem, no max-pool, 11.17 M parameters in 62 tensors (He et al. 2016, CIFAR form).

The layers take ``members``: None builds one plain model; K builds K such models side by side as one
network (:class:`fasttrick.models.FusedResNet18`), with the same module names and parameter order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .members import member_conv, member_norm


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, members: int | None = None) -> None:
        super().__init__()
        self.conv1 = member_conv(in_channels, out_channels, 3, members, stride=stride, padding=1)
        self.bn1 = member_norm(out_channels, members)
        self.conv2 = member_conv(out_channels, out_channels, 3, members, padding=1)
        self.bn2 = member_norm(out_channels, members)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                member_conv(in_channels, out_channels, 1, members, stride=stride), member_norm(out_channels, members)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def base_channels(width: float) -> int:
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, round(64 * width))


def stem_and_stages(width: float, members: int | None = None) -> tuple[nn.Sequential, nn.Sequential, int]:
    """The stem (conv 3x3, BN, ReLU), the 4 stages of 2 BasicBlocks, and one member's output channels.
    With members=K the stem is one dense convolution 3 -> K*base: the members share the input batch."""
    base = base_channels(width)
    copies = members or 1
    stem = nn.Sequential(nn.Conv2d(3, base * copies, 3, padding=1, bias=False), member_norm(base, members), nn.ReLU())
    stages = []
    in_channels = base
    for multiple, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
        out_channels = base * multiple
        stages += [
            BasicBlock(in_channels, out_channels, stride, members),
            BasicBlock(out_channels, out_channels, 1, members),
        ]
        in_channels = out_channels
    return stem, nn.Sequential(*stages), in_channels


class ResNet18(nn.Module):
    """``width`` scales every stage's channels (base 64 * width, at least 1 channel): 1.0 is the standard
    11.17 M-parameter model; 1/8 (8/16/32/64 channels, ~0.18 M parameters) keeps CPU smoke runs fast."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        self.stem, self.stages, features = stem_and_stages(width)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet18:
    return ResNet18(num_classes, width)
