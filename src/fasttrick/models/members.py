"""Layers that hold K independent models' copies of one layer side by side (horizontal fusion, as in HFTA,
arXiv 2102.02344), with member k's weights in slice k of dim 0 of every tensor.

- :func:`member_conv`: a convolution of K members, ``groups=K`` (one member's input channels feed only its
  own output channels); ``members=None`` gives the plain convolution of a single model.
- :class:`MemberBatchNorm2d`: BatchNorm over K*C channels, so each member keeps its own batch statistics,
  affine parameters, running statistics and ``num_batches_tracked`` (a [K] counter).
- :class:`MemberLinear`: K linear heads in one batched matmul.

They are subclasses of ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.Linear`` whose ``reset_parameters`` draws
each member from the distribution the plain layer draws from (kaiming fan-in is per group / per member).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def member_conv(
    in_channels: int, out_channels: int, kernel_size: int, members: int | None, stride: int = 1, padding: int = 0
) -> nn.Conv2d:
    """``members=None``: a plain ``Conv2d(in_channels, out_channels)``; ``members=K``: K of them as one grouped
    convolution, weight [K*out_channels, in_channels, k, k], member k's filters in rows k*out_channels..."""
    groups = members or 1
    return nn.Conv2d(
        in_channels * groups,
        out_channels * groups,
        kernel_size,
        stride=stride,
        padding=padding,
        groups=groups,
        bias=False,
    )


def member_norm(channels: int, members: int | None) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels) if members is None else MemberBatchNorm2d(channels, members)


class MemberBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over ``members * num_features`` channels, member-major: member k owns channels
    k*num_features...(k+1)*num_features-1. BatchNorm normalises each channel on its own, so every member's
    batch statistics, running statistics and affine parameters are its own. ``num_batches_tracked`` is a [K]
    counter (one per member, so a member loads or saves its own). The momentum is the plain layer's fixed 0.1
    (momentum=None, a cumulative average, would divide by the [K] counter and is not supported)."""

    def __init__(self, num_features: int, members: int) -> None:
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        super().__init__(members * num_features)
        self.members = members
        self.register_buffer("num_batches_tracked", torch.zeros(members, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"{self.num_features // self.members} channels x {self.members} members, eps={self.eps}"


class MemberLinear(nn.Linear):
    """K linear layers ``in_features -> out_features`` as one: weight [K*out_features, in_features] (member k's
    [out_features, in_features] in rows k*out_features...), bias [K*out_features].

    forward: [N, K*in_features] (member-major features) -> [N, K, out_features], one batched matmul."""

    def __init__(self, in_features: int, out_features: int, members: int) -> None:
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = members
        self.member_out_features = out_features
        super().__init__(in_features, members * out_features)

    def forward(self, x: Tensor) -> Tensor:
        members, out_features = self.members, self.member_out_features
        features = x.unflatten(1, (members, self.in_features)).transpose(0, 1)  # [K, N, in]
        weight = self.weight.unflatten(0, (members, out_features)).transpose(1, 2)  # [K, in, out]
        bias = self.bias.unflatten(0, (members, 1, out_features))  # [K, 1, out]
        return torch.baddbmm(bias, features, weight).transpose(0, 1)  # [N, K, out]

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.member_out_features} x {self.members} members"
