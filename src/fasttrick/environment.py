"""The facts about this machine that run folders and benchmark results record (versions, FusedSGDW
backends, DALI): :func:`environment_report`. ``python -m fasttrick.env`` prints them.
"""

from __future__ import annotations

import platform

import torch

from . import __version__, _backend
from .data import dali_import_error
from .ops import available_backends


def environment_report() -> dict[str, object]:
    triton = _backend.triton_probe()
    cuda = torch.cuda.is_available()
    return {
        "fasttrick": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "triton": triton.detail,
        "cpu_extension": _backend.extension_probe("cpu").detail,
        "cuda_extension": _backend.extension_probe("cuda").detail if torch.version.cuda else "CPU-only torch",
        "backends_cpu": available_backends("cpu"),
        "backends_cuda": available_backends("cuda") if cuda else [],
        "dali": _dali_detail(),
    }


def _dali_detail() -> str:
    """Whether DALI imports, asked the way build_loader asks it, so the report and `auto` agree."""
    error = dali_import_error()
    if error is not None:
        return f"not importable ({error}); pip install 'fasttrick[dali]'"
    import nvidia.dali

    return f"nvidia.dali {nvidia.dali.__version__}"
