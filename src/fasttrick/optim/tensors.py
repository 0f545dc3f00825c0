"""FusedSGDW's per-tensor helpers: which tensors a kernel takes, buffer dtypes, local shards and real
views, the lr's launch arguments, and the checks of a param group."""

from __future__ import annotations

import numbers
from typing import Any, cast

import torch
from torch import Tensor

from ..ops import KERNEL_BACKENDS, momentum_dtype
from ..ops.library import kernel_can_walk, members_are_blocks
from .checkpoint import MEMBER_TABLE
from .members import (
    _NON_NEGATIVE,
    MEMBER_KEYS,
    _member_rows,
)

# The kernels' buffer dtype per param dtype (ops.momentum_dtype), as a dict: looked up per tensor per step.
_BUFFER_DTYPE = {
    dtype: momentum_dtype(dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
}
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.complex128)


def _slow_path_cause(param: Tensor, grad: Tensor, buf: Tensor | None, members: int) -> str:
    """Why the kernels cannot walk this tensor (see _kernel_takes), in words for PerTensorPathWarning."""
    if grad.layout is not torch.strided:
        return f"a {grad.layout} grad"
    if grad.dtype != param.dtype:
        return f"a {grad.dtype} grad for a {param.dtype} param"
    if not members_are_blocks(param, members):
        return "a param whose member blocks are not consecutive in memory (dim 0 not outermost)"
    if not kernel_can_walk(param, param):
        return "a param that is a strided view (not dense in memory, e.g. a slice of a larger tensor)"
    if buf is not None and not kernel_can_walk(param, buf):
        return "a momentum buffer laid out unlike its param"
    return "a grad laid out unlike its param (e.g. an expanded or transposed grad)"


def _kernel_takes(param: Tensor, grad: Tensor, buf: Tensor | None) -> bool:
    """Whether the backend's kernel can update this tensor; the rest go through the per-tensor path.
    (Devices are not compared: a grad on another device is refused by every path, as by torch.)"""
    return (
        grad.dtype == param.dtype
        and (buf is None or buf.dtype == _BUFFER_DTYPE.get(param.dtype))
        and kernel_can_walk(param, grad, buf)
    )


def _buffer_dtype(p: Tensor) -> torch.dtype:
    """A complex param keeps a complex buffer (as torch's); real ones follow ops.momentum_dtype."""
    return p.dtype if p.is_complex() else momentum_dtype(p.dtype)


def _local_tensors(
    param: Tensor,
    grad: Tensor,
    buf: Tensor | None,
    dtensor: Any,  # DTensor, or () (see _dtensor_class)
) -> tuple[Tensor, Tensor, Tensor | None]:
    """What a kernel updates in place: a DTensor's local shard (its own data_ptr() is 0), and a
    complex tensor as its real view (the update is linear with real coefficients, as torch does it)."""
    if isinstance(param, dtensor):
        for name, t in (("grad", grad), ("momentum buffer", buf)):
            if t is not None and not (
                isinstance(t, dtensor) and t.device_mesh == param.device_mesh and t.placements == param.placements
            ):
                got = f"{t.placements} on {t.device_mesh}" if isinstance(t, dtensor) else f"a plain {type(t).__name__}"
                raise ValueError(
                    f"FusedSGDW updates a DTensor param through its local shard, so its {name} must be a DTensor "
                    f"with the same mesh and placements ({param.placements} on {param.device_mesh}), got {got}; "
                    "redistribute it first"
                )
        # grad and buf are DTensors too (checked above), which mypy cannot tell from `dtensor`.
        param, grad = param.to_local(), cast(Any, grad).to_local()
        buf = None if buf is None else cast(Any, buf).to_local()
    elif isinstance(grad, dtensor) or isinstance(buf, dtensor):
        raise ValueError("FusedSGDW: a plain tensor param has a DTensor grad or momentum buffer; make both DTensors")
    if param.is_complex():
        param, buf = torch.view_as_real(param), None if buf is None else torch.view_as_real(buf)
        grad = torch.view_as_real(grad.to_dense() if grad.is_sparse else grad)
    return param, grad, buf


def _lr_arguments(
    lr: float | Tensor, device: torch.device, differentiable: bool = False
) -> tuple[float, Tensor | None]:
    """The backends' (lr, lr_tensor) for a launch on `device`: a float as is; a tensor on the device
    as is (the caller's own, read by the kernel, no copy); a CPU tensor read on the host. A differentiable
    step keeps the tensor as it is, so that autograd sees the lr."""
    if not isinstance(lr, Tensor):
        return lr, None
    _check_lr_device(lr, device)
    if differentiable:
        return 0.0, lr
    if lr.device != device:  # a CPU lr for accelerator params: reading it costs no device sync
        return lr.item(), None
    if lr.dtype not in (torch.float32, torch.float64):  # kernels read fp32/fp64; fp16/bf16 widen exactly
        return 0.0, lr.to(torch.float32)
    return 0.0, lr


def _check_lr_device(lr: float | Tensor, device: torch.device) -> None:
    if isinstance(lr, Tensor) and lr.device != device and lr.device.type != "cpu":
        raise ValueError(
            f"FusedSGDW: the lr tensor is on {lr.device} but parameters are on {device}; create it on {device} "
            "(kept as your own tensor, read by the kernel) or on the CPU (read on the host each step)"
        )


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """torch.optim.SGD's checks of a group (per member for a group with members), and the backend's name."""
    if group["backend"] not in KERNEL_BACKENDS:
        raise ValueError(f"Unknown FusedSGDW backend {group['backend']!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    if group["members"] > 1:
        if MEMBER_TABLE not in group:  # as given, or as loaded; values written into a table were checked then
            _member_rows(group, group["members"])
        return
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr.is_floating_point():
            raise TypeError(f"Tensor lr must be floating point, got {lr.dtype}")
    for key in MEMBER_KEYS:
        value = group[key]
        if not isinstance(value, numbers.Real) and not (key == "lr" and isinstance(value, Tensor)):
            raise TypeError(
                f"FusedSGDW: {key} must be a number (lr: or a one-element tensor), got {type(value).__name__}; "
                "a value per member takes members=K"
            )
        if isinstance(value, Tensor):
            value = value.detach()  # an lr a differentiable step is taken with respect to
        if key in _NON_NEGATIVE and not float(value) >= 0.0:
            raise ValueError(f"Invalid {_NON_NEGATIVE[key]}: {value}")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def _has_buffers(group: dict[str, Any]) -> bool:
    """Whether the group's params keep momentum buffers: a group with members always does (its momenta
    are on the device, and reading them would sync), others when momentum is not 0, as in torch."""
    return group["members"] > 1 or group["momentum"] != 0
