"""FusedSGDW update backends: pure PyTorch (reference, foreach), Triton, and the C++/CUDA extension.

`dispatch.resolve_backend(name, device)` is the one entry (per device: a tiny test launch decides);
every backend function takes the arguments of the op schema in ops/library.py, hyper-parameters by keyword
(`dispatch.SgdwBackend`).
"""

from .dispatch import KERNEL_BACKENDS, BackendUnavailableError, available_backends, resolve_backend
from .reference import momentum_dtype, sgdw_reference_

__all__ = [
    "KERNEL_BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "momentum_dtype",
    "resolve_backend",
    "sgdw_reference_",
]
