"""Optimizers from config: FusedSGDW (the default SGD path), torch SGD, Adam, AdamW, NAdam.

Every parameter gets the configured weight_decay (biases and BatchNorm included), as plain
``torch.optim.SGD(model.parameters(), weight_decay=...)`` in the post does. torch's fused
implementations are used on CUDA where they exist (SGD, Adam, AdamW), foreach otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import AdamConfig, FusedSGDWConfig, NAdamConfig, SGDConfig
from ..optim import FusedSGDW


def build_optimizer(
    cfg: FusedSGDWConfig | SGDConfig | AdamConfig | NAdamConfig,
    params: Iterable[torch.Tensor],
    device: torch.device,
) -> torch.optim.Optimizer:
    params = list(params)
    cuda = device.type == "cuda"
    # fused=True on CUDA; on the CPU foreach (one op per tensor list) beats the per-tensor loop.
    impl = {"fused": True} if cuda else {"foreach": True}
    if cfg.name == "fused_sgdw":
        return FusedSGDW(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            dampening=cfg.dampening,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
            decoupled_weight_decay=cfg.decoupled_weight_decay,
            backend=cfg.backend,
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            dampening=cfg.dampening,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
            **impl,
        )
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return cls(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad, **impl
        )
    if cfg.name == "nadam":
        return torch.optim.NAdam(
            params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            momentum_decay=cfg.momentum_decay,
            decoupled_weight_decay=cfg.decoupled_weight_decay,
            foreach=True,
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # unreachable: the config schema lists them all
