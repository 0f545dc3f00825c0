"""One entry for every FusedSGDW backend: what is available on a device, and which function runs it.

Every backend function takes the same arguments, in the order of the op schema (ops/library.py).
`auto` picks the fastest backend available for the device and falls back silently; an explicitly
named backend that cannot run raises `BackendUnavailableError` carrying the original import or build
error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .. import _backend
from . import library  # (defines the fasttrick:: op schemas before any kernel is registered)
from .foreach import sgdw_foreach_
from .reference import sgdw_reference_

BACKENDS = ("auto", "triton", "cuda", "cpu", "foreach", "reference")

# Preference order of `auto`. The CUDA extension leads on CUDA because it has no Python launch cost;
# Triton's interpreter is a correctness tool and never auto-selected on CPU.
_AUTO_ORDER = {
    "cuda": ("cuda", "triton", "foreach", "reference"),
    "cpu": ("cpu", "foreach", "reference"),
}
_DEFAULT_AUTO_ORDER = ("foreach", "reference")

SgdwFn = Callable[..., None]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message carries the original cause."""


def _why_unavailable(name: str, device_type: str) -> str | None:
    """None if `name` can run on `device_type`, else the reason."""
    if name in ("foreach", "reference"):
        return None
    if name in ("cpu", "cuda"):
        if device_type != name:
            return f"the {name!r} backend runs on {name} tensors, these are on {device_type}"
        probe = _backend.extension_probe(name)
        return None if probe.available else probe.detail
    if name == "triton":
        if device_type == "cuda" and _backend.triton_interpret():
            return "TRITON_INTERPRET=1 is set: Triton runs CPU tensors only"
        if device_type == "cpu" and not _backend.triton_interpret():
            return "Triton runs CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before importing triton"
        if device_type not in ("cpu", "cuda"):
            return f"Triton does not run on {device_type} here"
        probe = _backend.triton_probe()
        return None if probe.available else probe.detail
    raise ValueError(f"unknown FusedSGDW backend {name!r}; choose one of {', '.join(BACKENDS)}")


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends that can run on `device` (default: cuda if available, else cpu), fastest first."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    order = _AUTO_ORDER.get(device_type, _DEFAULT_AUTO_ORDER)
    extra = tuple(b for b in BACKENDS[1:] if b not in order)
    return [name for name in order + extra if _why_unavailable(name, device_type) is None]


def resolve_backend(name: str, device: str | torch.device) -> tuple[str, SgdwFn]:
    """(concrete backend name, update function) for `name` on `device` (a torch.device or its type)."""
    return _resolve(name, torch.device(device).type)


@functools.cache
def _resolve(name: str, device_type: str) -> tuple[str, SgdwFn]:
    if name == "auto":
        name = available_backends(device_type)[0]
    reason = _why_unavailable(name, device_type)
    if reason is not None:
        raise BackendUnavailableError(f"FusedSGDW backend {name!r} is unavailable on {device_type}: {reason}")
    return name, _backend_function(name)


def _backend_function(name: str) -> SgdwFn:
    if name == "reference":
        return sgdw_reference_
    if name == "foreach":
        return sgdw_foreach_
    if name == "triton":
        from .triton_sgdw import sgdw_triton_  # imports triton; registers the op's kernels

        # Eager calls skip the op dispatcher's Python round trip; torch.compile must see the op.
        return library.op_backend(torch.ops.fasttrick.sgdw_triton_, eager=sgdw_triton_)
    return library.op_backend(torch.ops.fasttrick.sgdw_)  # "cpu" / "cuda": kernels registered by the extension probe
