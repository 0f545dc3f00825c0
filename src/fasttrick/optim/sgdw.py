"""FusedSGDW: SGD with momentum and L2 or decoupled weight decay, one pass over memory per step."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..ops import BACKENDS, momentum_dtype, resolve_backend
from .checkpoint import loaded_group, saved_group

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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
        params: parameters or param-group dicts, as for any torch optimizer.
        lr: learning rate, a float or a one-element tensor. It is kept as a 0-d fp32 tensor on the
            parameters' device, so the step never syncs with the host, torch's LR schedulers work
            (they ``fill_`` it) and a compiled step does not recompile when it changes.
        momentum, dampening, weight_decay, nesterov, maximize: as in :class:`torch.optim.SGD`.
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
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
            backend=backend,
        )
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group)
        devices = {p.device for p in group["params"]}
        if len(devices) > 1:
            raise ValueError(
                f"FusedSGDW: a param group must hold parameters of one device, got {sorted(map(str, devices))}; "
                "put each device's parameters in a group of its own"
            )
        for p in group["params"]:
            if p.dtype not in _SUPPORTED_DTYPES:
                raise TypeError(f"FusedSGDW supports float32, float16, bfloat16 and float64 parameters, got {p.dtype}")
        device = next(iter(devices))
        group["lr"] = _lr_tensor(group["lr"], device)
        self._update_function(group["backend"], device.type)  # raises now if an explicit backend cannot run

    def _update_function(self, backend: str, device_type: str) -> Callable[..., None]:
        """The backend's update function, resolved once outside any compiled region: resolving probes
        imports and extensions, which torch.compile cannot trace."""
        updates = self.__dict__.setdefault("_updates", {})
        key = (backend, device_type)
        if key not in updates:
            updates[key] = resolve_backend(backend, device_type)[1]
        return updates[key]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # An optimizer pickled by an earlier FusedSGDW may lack keys added since.
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("nesterov", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("backend", self.defaults.get("backend", "auto"))

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
            self.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=momentum_dtype(p.dtype), copy=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss

    def _step_group(self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        device = params[0].device
        if not isinstance(group["lr"], Tensor) or group["lr"].device != device:
            group["lr"] = _lr_tensor(group["lr"], device)  # a float set by hand, or params moved
        if grad_scale is not None:
            grad_scale = grad_scale.to(device, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(device, non_blocking=True)

        has_momentum = group["momentum"] != 0
        # (dtype, first_step) -> (params, grads, buffers): a tensor's first step does not read its
        # buffer, so tensors starting now (step 1, or unfrozen later) go in a launch of their own.
        launches: dict[tuple[torch.dtype, bool], tuple[list[Tensor], list[Tensor], list[Tensor]]] = defaultdict(
            lambda: ([], [], [])
        )
        created: list[Tensor] = []
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("FusedSGDW does not support sparse gradients")
            first_step = False
            if has_momentum:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = torch.empty_like(p, dtype=momentum_dtype(p.dtype), memory_format=torch.preserve_format)
                    state["momentum_buffer"] = buf
                    created.append(p)
                    first_step = True
            lists = launches[(p.dtype, first_step)]
            lists[0].append(p)
            lists[1].append(p.grad)
            if has_momentum:
                lists[2].append(buf)

        if created and found_inf is not None and found_inf.item() != 0:
            # The one host read: a skipped step must not leave the new (unwritten) buffers behind.
            for p in created:
                del self.state[p]["momentum_buffer"]
            return

        update = self._update_function(group["backend"], device.type)
        for (_, first_step), (ps, gs, bs) in launches.items():
            update(
                ps,
                gs,
                bs,
                group["lr"],
                grad_scale,
                found_inf,
                group["momentum"],
                group["dampening"],
                group["weight_decay"],
                group["nesterov"],
                group["maximize"],
                group["decoupled_weight_decay"],
                first_step,
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


def _lr_tensor(lr: float | Tensor, device: torch.device) -> Tensor:
    """lr as the 0-d fp32 tensor on `device` that every backend reads (no host sync).

    A tensor that already is one is kept (a caller holding it can keep updating it in place).
    """
    if isinstance(lr, Tensor) and lr.dtype == torch.float32 and lr.device == device:
        return lr.reshape(())
    return torch.tensor(float(lr), dtype=torch.float32).to(device)
