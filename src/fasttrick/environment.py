"""The facts about this machine that run folders and benchmark results record (versions, FusedSGDW
backends per device, the study extra, DALI): :func:`environment_report`. ``python -m fasttrick.env``
prints them.

For every device (cpu, each cuda:N) it names the backend `auto` runs there and why each other backend
is skipped, with the fix; the probes are the ones the optimizer uses (ops/dispatch.py), tiny launches
included. Works on a bare `pip install fasttrick` (no study extra).
"""

from __future__ import annotations

import platform

import torch

from . import __version__, _backend
from .ops.dispatch import auto_choice, explain_backends


def environment_report() -> dict[str, object]:
    triton = _backend.triton_probe()
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    devices = ["cpu"] + [f"cuda:{i}" for i in range(len(gpus))]
    return {
        "fasttrick": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": ", ".join(gpus) or None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "triton": triton.detail,
        "cpu_extension": _backend.extension_probe("cpu").detail,
        "cuda_extension": _backend.extension_probe("cuda").detail if torch.version.cuda else "CPU-only torch",
        **{f"backends {device}": _backends(device) for device in devices},
        "study_extra": _backend.study_extra_error() or "installed",
        "dali": _dali_detail(),
    }


def _backends(device: str) -> dict[str, str]:
    """{"auto": the backend auto runs, then every backend: "ok" or why it cannot run here}."""
    chosen, _ = auto_choice(device)
    return {"auto": chosen or "none runs here"} | {
        name: "ok" if cause is None else f"unavailable: {cause}" for name, cause in explain_backends(device).items()
    }


def _dali_detail() -> str:
    """Whether DALI imports, asked the way build_loader asks it, so the report and `auto` agree."""
    if _backend.study_extra_error() is not None:
        return 'the data loaders need the study extra: pip install "fasttrick[study,dali]"'
    from .data import dali_import_error  # the study extra's numpy / pillow

    error = dali_import_error()
    if error is not None:
        return f"not importable ({error}); pip install 'fasttrick[dali]'"
    import nvidia.dali

    return f"nvidia.dali {nvidia.dali.__version__}"
