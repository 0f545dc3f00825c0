"""fasttrick: a one-pass fused SGD(-momentum, weight decay) optimizer, and a fast runner for
optimizer / LR-schedule / weight-decay studies on CIFAR-10.

    from fasttrick import FusedSGDW, available_backends, sgdw

Importing it loads torch and the optimizer only: the study runner's dependencies (pydantic, pyyaml,
matplotlib, tqdm, ...) come with `pip install "fasttrick[study]"` and are imported by its CLIs.
"""

from .ops import BackendUnavailableError, available_backends
from .ops.dispatch import BackendFallbackWarning
from .optim import FusedSGDW, PerTensorPathWarning, sgdw

__version__ = "0.1.0"

__all__ = [
    "BackendFallbackWarning",
    "BackendUnavailableError",
    "FusedSGDW",
    "PerTensorPathWarning",
    "__version__",
    "available_backends",
    "sgdw",
]
