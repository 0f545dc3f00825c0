"""FusedSGDW: SGD with momentum and L2 or decoupled weight decay, one pass over memory per step."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, cast, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..ops import BACKENDS, momentum_dtype, resolve_backend, sgdw_reference_
from ..ops.library import kernel_can_walk
from .checkpoint import loaded_group, saved_group

# The kernels' buffer dtype per param dtype (ops.momentum_dtype), as a dict: looked up per tensor per step.
_BUFFER_DTYPE = {
    dtype: momentum_dtype(dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
}
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.complex128)


class FusedSGDW(Optimizer):
    r"""SGD with momentum plus coupled L2 or decoupled weight decay, fused into one kernel per step.

    A drop-in for :class:`torch.optim.SGD`: with ``decoupled_weight_decay=False`` (the default) the
    update is exactly torch's. Per element, in this order (g = grad, b = momentum buffer)::

        g = g / grad_scale                      # when driven by torch.amp.GradScaler
        g = -g                                  # maximize
        g = g + weight_decay * p                # coupled L2 (default), or with decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)         #   decay applied to the weights, outside the buffer
        b = g  (tensor's first step)  else  b = momentum * b + (1 - dampening) * g
        u = g + momentum * b  if nesterov  else  b
        p = p - lr * u

    Arithmetic is fp32 (fp64 for fp64 params); fp16/bf16 params keep an fp32 momentum buffer.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer. Any strided layout,
            sparse gradients and complex parameters (updated as real views, as torch does) are taken;
            DTensor parameters (FSDP2, tensor parallel) are updated through their local shards.
        lr: learning rate, a float or a one-element tensor, kept as given in ``param_groups``, as in
            torch: a float stays a float (loggers, ``get_last_lr()`` and checkpoints see floats) and
            reaches the kernels as a launch argument; a tensor stays the caller's own object, read by
            the kernels on the device (no host sync, and a compiled step does not recompile when a
            scheduler ``fill_``s it). A tensor lr lives on the parameters' device, or on the CPU
            (read on the host each step, which a CUDA graph cannot capture).
        momentum, dampening, weight_decay, nesterov, maximize: as in :class:`torch.optim.SGD`.
        foreach, fused: accepted for torch.optim.SGD compatibility and select nothing: ``backend``
            chooses the implementation.
        differentiable: only ``False``; a step that autograd can differentiate is not supported.
        decoupled_weight_decay: decay the weights by ``lr * weight_decay`` directly (SGDW) instead
            of adding ``weight_decay * p`` to the gradient.
        backend: ``"auto"`` (fastest available for the device; never fails), or one of
            ``"triton"``, ``"cuda"``, ``"cpu"``, ``"foreach"``, ``"reference"`` (raises
            :class:`fasttrick.BackendUnavailableError` with the cause if it cannot run).

    AMP: ``GradScaler.step`` hands the scale and the inf flag to the kernel
    (``_step_supports_amp_scaling``); a step with an inf/NaN gradient changes nothing. On a step
    that creates momentum buffers under a GradScaler, the optimizer reads ``found_inf`` once on the
    host so that a skipped first step leaves no buffer behind, as ``torch.optim.SGD`` does.
    """

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf instead of syncing

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
    ) -> None:
        if differentiable:
            raise ValueError(
                "FusedSGDW does not support differentiable=True (its kernels update in place outside autograd); "
                "use torch.optim.SGD(..., differentiable=True) to differentiate through the step"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            backend=backend,
        )
        _check_hyperparameters(defaults)
        # (backend, device) -> update function, resolved outside any compiled region (resolving probes
        # imports and extensions, which torch.compile cannot trace); a plain attribute Dynamo reads.
        self._backend_fns: dict[tuple[str, torch.device], Callable[..., None]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group)
        for p in group["params"]:
            if p.dtype not in _SUPPORTED_DTYPES:
                raise TypeError(
                    "FusedSGDW supports float32, float16, bfloat16, float64, complex64 and complex128 parameters, "
                    f"got {p.dtype}"
                )
        for device in {p.device for p in group["params"]}:
            _check_lr_device(group["lr"], device)
            self._update_function(group["backend"], device)  # raises now if an explicit backend cannot run

    def _update_function(self, backend: str, device: torch.device) -> Callable[..., None]:
        update = self._backend_fns.get((backend, device))
        if update is None:  # params moved to a new device, or a group's backend changed, since __init__
            update = resolve_backend(backend, device)[1]
            self._backend_fns[(backend, device)] = update
        return update

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # An optimizer pickled by an earlier FusedSGDW may lack keys added since.
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("nesterov", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("backend", self.defaults.get("backend", "auto"))
        self._backend_fns = getattr(self, "_backend_fns", {})  # not pickled state: resolved again on use

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, its param groups in torch.optim.SGD's format (see optim/checkpoint.py):
        no ``backend``; decoupled decay under ``decoupled_weight_decay`` instead of ``weight_decay``."""
        state = super().state_dict()
        state["param_groups"] = [saved_group(group) for group in state["param_groups"]]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a FusedSGDW or torch.optim.SGD state_dict; each group keeps this optimizer's backend.

        torch's loader casts every floating state tensor to its parameter's dtype, which would round
        an fp16/bf16 parameter's fp32 momentum buffer; the buffers are restored from the incoming
        state_dict at full precision afterwards.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"FusedSGDW: the state_dict has {len(saved_groups)} param groups, this optimizer "
                f"{len(self.param_groups)}; build the optimizer with the groups it was saved from"
            )
        groups = [loaded_group(s, g["backend"]) for s, g in zip(saved_groups, self.param_groups, strict=True)]
        for group in groups:
            _check_hyperparameters(group)
        saved_ids = itertools.chain.from_iterable(g["params"] for g in saved_groups)
        current = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        param_of = dict(zip(saved_ids, current, strict=False))  # sizes: checked by torch's loader
        buffers = {
            param_of[pid]: s["momentum_buffer"]
            for pid, s in state_dict["state"].items()
            if pid in param_of and isinstance(s.get("momentum_buffer"), Tensor)
        }
        super().load_state_dict({**state_dict, "param_groups": groups})
        for p, buf in buffers.items():
            self.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=_buffer_dtype(p), copy=True)

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        if found_inf is not None and self._creates_buffers() and found_inf.item() != 0:
            # The one host read, on a step that would create momentum buffers: a skipped step changes
            # nothing, and must not leave new (unwritten) buffers behind. Other steps skip on the device.
            return loss
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss

    def _creates_buffers(self) -> bool:
        return any(
            group["momentum"] != 0 and p.grad is not None and "momentum_buffer" not in self.state.get(p, {})
            for group in self.param_groups
            for p in group["params"]
        )

    def _step_group(self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        has_momentum = group["momentum"] != 0
        # (device, dtype, first_step, kernel) -> (params, grads, buffers), all plain local tensors. A
        # tensor's first step does not read its buffer, so tensors starting now (step 1, or unfrozen
        # later) go in a launch of their own; `kernel` False is the per-tensor path for what the
        # kernels cannot walk (sparse grads, strided views, grads laid out unlike their param).
        launches: dict[tuple[torch.device, torch.dtype, bool, bool], tuple[list[Tensor], list[Tensor], list[Tensor]]]
        launches = defaultdict(lambda: ([], [], []))
        created: list[Tensor] = []
        dtensor = _dtensor_class()
        try:
            for p in group["params"]:
                if p.grad is None:
                    continue
                first_step = False
                buf = None
                if has_momentum:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.empty_like(p, dtype=_buffer_dtype(p), memory_format=torch.preserve_format)
                        state["momentum_buffer"] = buf
                        created.append(p)
                        first_step = True
                param, grad = p, p.grad
                if p.is_complex() or isinstance(p, dtensor) or isinstance(grad, dtensor) or isinstance(buf, dtensor):
                    param, grad, buf = _local_tensors(param, grad, buf, dtensor)
                lists = launches[(param.device, param.dtype, first_step, _kernel_takes(param, grad, buf))]
                lists[0].append(param)
                lists[1].append(grad)
                if buf is not None:
                    lists[2].append(buf)
            calls = []
            for (device, _, first_step, kernel), (ps, gs, bs) in launches.items():
                update = self._update_function(group["backend"], device) if kernel else sgdw_reference_
                lr_float, lr_tensor = _lr_arguments(group["lr"], device)
                calls.append((update, ps, gs, bs, lr_float, first_step, lr_tensor, device))
        except Exception:
            _forget_buffers(self.state, created)  # refused before any launch: no unwritten buffer stays
            raise

        for update, ps, gs, bs, lr_float, first_step, lr_tensor, device in calls:  # launched after every check
            update(
                ps,
                gs,
                bs,
                lr_float,
                group["momentum"],
                group["dampening"],
                group["weight_decay"],
                group["nesterov"],
                group["maximize"],
                group["decoupled_weight_decay"],
                first_step,
                lr_tensor=lr_tensor,
                grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
                found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True),
            )


def _forget_buffers(state: dict[Tensor, dict[str, Any]], params: list[Tensor]) -> None:
    for p in params:
        del state[p]["momentum_buffer"]


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


def _dtensor_class() -> type | tuple[()]:
    """DTensor, or () (isinstance of nothing) in a process that never imported torch.distributed.tensor
    (it takes seconds to import, and without it there is no DTensor)."""
    module = getattr(torch.distributed, "tensor", None)
    return () if module is None else module.DTensor


def _lr_arguments(lr: float | Tensor, device: torch.device) -> tuple[float, Tensor | None]:
    """The backends' (lr, lr_tensor) for a launch on `device`: a float as is; a tensor on the device
    as is (the caller's own, read by the kernel, no copy); a CPU tensor read on the host."""
    if not isinstance(lr, Tensor):
        return lr, None
    _check_lr_device(lr, device)
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
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr.is_floating_point():
            raise TypeError(f"Tensor lr must be floating point, got {lr.dtype}")
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not group["momentum"] >= 0.0:
        raise ValueError(f"Invalid momentum value: {group['momentum']}")
    if not group["weight_decay"] >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if group["backend"] not in BACKENDS:
        raise ValueError(f"Unknown FusedSGDW backend {group['backend']!r}; choose one of {', '.join(BACKENDS)}")
