"""fasttrick: a one-pass fused SGD(-momentum, weight decay) optimizer, and a fast runner for
optimizer / LR-schedule / weight-decay studies on CIFAR-10.

    from fasttrick import FusedSGDW, available_backends
"""

from .ops import BackendUnavailableError, available_backends
from .optim import FusedSGDW

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "FusedSGDW", "__version__", "available_backends"]
