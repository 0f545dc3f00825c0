"""One entry for every FusedSGDW backend: what can run on a device, and which function runs it.

Every backend function takes the arguments of the op schema (ops/library.py), hyper-parameters by keyword
(`SgdwBackend`).

A backend "can run" on a device when it imports or builds (the probes in _backend.py) AND a tiny launch
of its update on that very device computes the right values (`_probe_launch`). The launch matters on
GPUs: a CUDA extension built without the GPU's architecture imports fine and then fails its first
step with "no kernel image is available"; and two GPUs of one machine may differ, so the probe is per
device (cuda:0, cuda:1), not per device type. Each probe runs once per process.

`auto` takes the first backend of the device's preference order that can run. If that is not the
device's best, it warns once per (device, cause) with a `BackendFallbackWarning` that names the cause and
the fix. An explicitly named backend that cannot run raises `BackendUnavailableError` with the cause.
Resolution probes, imports and warns, so it must happen outside torch.compile'd code: the optimizer
resolves once per (backend, device) and keeps the function.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Protocol

import torch
from torch import Tensor

from .. import _backend
from . import library  # (defines the fasttrick:: op schemas before any kernel is registered)
from .foreach import sgdw_foreach_
from .reference import sgdw_reference_

# FusedSGDW(backend=...): the kernels that compute the update (a config's optimizer.backend). Not the data
# loaders (fasttrick.data.LOADER_BACKENDS) nor where a grid's runs train (fasttrick.grid.options.EXECUTORS).
KERNEL_BACKENDS = ("auto", "triton", "cuda", "cpu", "foreach", "reference")

# Preference order of `auto`, fastest first; the first entry is the device's best. The CUDA extension
# leads on CUDA because it has no Python launch cost; Triton's interpreter is a correctness tool and
# never auto-selected on CPU.
_AUTO_ORDER = {
    "cuda": ("cuda", "triton", "foreach", "reference"),
    "cpu": ("cpu", "foreach", "reference"),
}
_DEFAULT_AUTO_ORDER = ("foreach", "reference")


class SgdwBackend(Protocol):
    """Every backend function: the op schema's arguments (ops/library.py), hyper-parameters by keyword."""

    def __call__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        momentum_buffers: list[Tensor],
        *,
        lr: float,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
        maximize: bool,
        decoupled_weight_decay: bool,
        first_step: bool,
        lr_tensor: Tensor | None = None,
        hyper: Tensor | None = None,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
    ) -> None: ...


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message carries the original cause."""


class BackendFallbackWarning(UserWarning):
    """`auto` runs a slower backend than the device's best; the message names the cause and the fix."""


def resolve_backend(name: str, device: str | torch.device) -> tuple[str, SgdwBackend]:
    """(concrete backend name, update function) for `name` on `device` (a torch.device, or a device
    type such as "cuda", which means the current CUDA device)."""
    return _resolve(name, _concrete(device))


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends that can run on `device` (default: the current CUDA device if any, else cpu), fastest first."""
    return [name for name, cause in explain_backends(device).items() if cause is None]


def explain_backends(device: str | torch.device | None = None) -> dict[str, str | None]:
    """Every backend, fastest first for `device`: None if it can run there, else why not and the fix."""
    device = _concrete(device)
    order = _AUTO_ORDER.get(device.type, _DEFAULT_AUTO_ORDER)
    explained = {}
    for name in order + tuple(b for b in KERNEL_BACKENDS[1:] if b not in order):
        cause = _why_not(name, device)
        explained[name] = None if cause is None else cause + _fix(name, cause, device)
    return explained


def auto_choice(device: str | torch.device | None = None) -> tuple[str | None, list[tuple[str, str]]]:
    """The backend `auto` runs on `device` (None: none can), and the faster ones it skips with their causes."""
    device = _concrete(device)
    skipped: list[tuple[str, str]] = []
    for candidate in _AUTO_ORDER.get(device.type, _DEFAULT_AUTO_ORDER):
        cause = _why_not(candidate, device)
        if cause is None:
            return candidate, skipped
        skipped.append((candidate, cause))
    return None, skipped


def _concrete(device: str | torch.device | None) -> torch.device:
    """The device probes are kept for: a bare "cuda" is the current CUDA device (cuda:0 and cuda:1 may differ)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@functools.cache
def _resolve(name: str, device: torch.device) -> tuple[str, SgdwBackend]:
    if name not in KERNEL_BACKENDS:
        raise ValueError(f"unknown FusedSGDW backend {name!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    if name != "auto":
        cause = _why_not(name, device)
        if cause is not None:
            raise BackendUnavailableError(
                f"FusedSGDW backend {name!r} is unavailable on {device}: {cause}{_fix(name, cause, device)}"
            )
        return name, _backend_function(name)
    chosen, skipped = auto_choice(device)
    if chosen is None:
        raise BackendUnavailableError(
            f"no FusedSGDW backend runs on {device}: " + "; ".join(f"{n}: {c}" for n, c in skipped)
        )
    for better, cause in skipped:
        _warn_fallback(device, chosen, better, cause)
    return chosen, _backend_function(chosen)


_WARNED: set[tuple[str, str]] = set()  # (device, cause) pairs already warned about in this process


def _warn_fallback(device: torch.device, chosen: str, skipped: str, cause: str) -> None:
    if (str(device), cause) in _WARNED:
        return
    _WARNED.add((str(device), cause))
    warnings.warn(
        f"FusedSGDW(backend='auto') on {device} runs the slower {chosen!r} backend: {skipped!r} is unavailable "
        f"({cause}){_fix(skipped, cause, device)}",
        BackendFallbackWarning,
        stacklevel=4,  # the caller of resolve_backend (the optimizer)
    )


def _fix(name: str, cause: str, device: torch.device) -> str:
    """What to do about `cause`, as a sentence appended to the message ("" where the cause says it all)."""
    if name in ("cpu", "cuda") and device.type != name:
        return ""  # the wrong backend for these tensors' device
    build = 'pip install --no-build-isolation -e ".[dev]" in the source checkout'
    if name == "cpu":
        return f". Fix: build the C++ kernel: {build} (or python setup.py build_ext --inplace)"
    if name == "cuda":
        if "no kernel image" in cause and device.type == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return (
                f". Fix: rebuild the CUDA extension for this GPU (sm_{major}{minor}): "
                f'TORCH_CUDA_ARCH_LIST="{major}.{minor}" CUDA_HOME=/path/to/cuda {build}'
            )
        return (
            f". Fix: build the CUDA extension: CUDA_HOME=/path/to/cuda (with nvcc) {build}, with a CUDA build of torch"
        )
    if name == "triton" and "not importable" in cause:
        return ". Fix: pip install triton (Linux)"
    return ""


def _why_not(name: str, device: torch.device) -> str | None:
    """None if `name` can run on `device`, else the reason (import/build first, then a test launch)."""
    return _why_unavailable(name, device.type) or _launch_error(name, device)


def _why_unavailable(name: str, device_type: str) -> str | None:
    """None if `name` imports/builds for `device_type`, else the reason."""
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
    raise ValueError(f"unknown FusedSGDW backend {name!r}; choose one of {', '.join(KERNEL_BACKENDS)}")


@functools.cache
def _launch_error(name: str, device: torch.device) -> str | None:
    """None if a tiny launch of `name`'s update on `device` computes the right values, else why not."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    if device.type == "meta":
        return None  # meta tensors hold shapes, no values: there is no result to check
    try:
        _probe_launch(_backend_function(name), device)
    except Exception as exc:  # whatever the kernel raises is the cause to report
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"a test launch on {device} failed: {type(exc).__name__}: {message}"
    return None


# A test step whose every value is exact in binary: b = 0.5 * 1 + g, p = p - 0.5 * b.
_PROBE_P, _PROBE_G = [1.0, 2.0, -4.0], [0.5, 0.25, 1.0]
_PROBE_EXPECTED_B, _PROBE_EXPECTED_P = [1.0, 0.75, 1.5], [0.5, 1.625, -4.75]


def _probe_launch(update: SgdwBackend, device: torch.device) -> None:
    """Runs `update` once on three fp32 values on `device` and checks the result; raises if it fails."""
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        p = torch.tensor(_PROBE_P, device=device)
        g = torch.tensor(_PROBE_G, device=device)
        b = torch.ones(3, device=device)
        update(
            [p], [g], [b], lr=0.5, momentum=0.5, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
            decoupled_weight_decay=False, first_step=False,
        )  # fmt: skip
        got_p, got_b = p.tolist(), b.tolist()  # on CUDA: waits for the kernel, so its errors surface here
    if got_p != _PROBE_EXPECTED_P or got_b != _PROBE_EXPECTED_B:
        raise RuntimeError(
            f"wrong result: params {got_p}, buffer {got_b}; expected {_PROBE_EXPECTED_P}, {_PROBE_EXPECTED_B}"
        )


@functools.cache  # one function object per backend: the optimizer and the probes share it
def _backend_function(name: str) -> SgdwBackend:
    if name == "reference":
        return sgdw_reference_
    if name == "foreach":
        return sgdw_foreach_
    if name == "triton":
        from .triton_sgdw import sgdw_triton_  # imports triton; registers the op's kernels

        # Eager calls skip the op dispatcher's Python round trip; torch.compile must see the op.
        return library.op_backend(torch.ops.fasttrick.sgdw_triton_, eager=sgdw_triton_)
    return library.op_backend(torch.ops.fasttrick.sgdw_)  # "cpu" / "cuda": kernels registered by the extension probe
