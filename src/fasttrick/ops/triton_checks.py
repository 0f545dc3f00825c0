"""The Triton launcher's checks of its arguments, before anything launches (fasttrick.ops.triton_sgdw)."""

from __future__ import annotations

import torch
from torch import Tensor

from .library import kernel_can_walk, members_are_blocks


def _check_launchable(
    index: int, device: torch.device, param: Tensor, grad: Tensor, buf: Tensor | None, members: int
) -> None:
    """The kernel gets raw addresses: each must be a plain tensor's own memory on the launch's device,
    laid out the way the kernel walks it (ops/library.py: kernel_can_walk, members_are_blocks). A
    DTensor's data_ptr() is 0 and would crash the process; FusedSGDW passes its local shard instead."""
    for name, t in (("param", param), ("grad", grad), ("momentum buffer", buf)):
        if t is not None and (t.device != device or t.data_ptr() == 0):
            raise ValueError(
                f"the triton backend got {name} {index} ({type(t).__name__} on {t.device}) with no address of its "
                f"own on {device}; pass plain local tensors (a DTensor's to_local()) of the launch's device"
            )
    if not kernel_can_walk(param, grad, buf):
        raise ValueError(
            f"the triton backend needs param {index} (shape {tuple(param.shape)}, strides {param.stride()}) to be "
            f"dense, with its grad (strides {grad.stride()}) and momentum buffer laid out the same; "
            "FusedSGDW.step routes other layouts to its per-tensor path"
        )
    if not members_are_blocks(param, members):
        raise ValueError(
            f"the triton backend cannot split param {index} (shape {tuple(param.shape)}, strides {param.stride()}) "
            f"into {members} members: dim 0 must be divisible by {members} and outermost in memory; "
            "FusedSGDW.step routes other layouts to its per-tensor path"
        )


def _check_arguments(
    param: Tensor,
    momentum: float,
    has_momentum: bool,
    n_buffers: int,
    lr_tensor: Tensor | None,
    hyper: Tensor | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """The launch's own checks (the per-tensor layout checks are `_launch_tables`'): what the kernel reads
    must have the dtype and shape it reads it as, on the params' device."""
    if param.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"the triton backend supports float32/float16/bfloat16/float64 params, got {param.dtype}")
    if hyper is None and (momentum != 0) != has_momentum:
        raise ValueError(f"momentum {momentum} with {n_buffers} buffers: momentum != 0 takes one per param")
    if hyper is not None and not (
        hyper.shape == (4,) or (hyper.dim() == 2 and hyper.shape[0] >= 1 and hyper.shape[1] == 4)
    ):
        raise ValueError(f"the triton backend needs hyper as [4] or [members, 4], got {tuple(hyper.shape)}")
    for name, t, dtypes in (
        ("lr_tensor", lr_tensor, (torch.float32, torch.float64)),
        ("hyper", hyper, (torch.float64,)),
        ("grad_scale", grad_scale, (torch.float32,)),
        ("found_inf", found_inf, (torch.float32,)),
    ):
        if t is not None and (
            t.device != param.device
            or t.dtype not in dtypes
            or not t.is_contiguous()
            or (name != "hyper" and t.numel() != 1)
        ):
            raise ValueError(
                f"the triton backend needs {name} as a contiguous {dtypes} tensor on {param.device}"
                f"{'' if name == 'hyper' else ' of one element'}, got {t.dtype} {tuple(t.shape)} on {t.device}"
            )
