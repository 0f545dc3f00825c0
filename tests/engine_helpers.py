"""What the engine's tests share: a small synthetic CIFAR-10 a tiny model learns from, a quiet session, and
the tiny run config (tests/test_engine.py, tests/test_arrays.py)."""

from __future__ import annotations

import numpy as np

from fasttrick.data import Cifar10
from fasttrick.engine import Session

# Width 1/8, the smallest safe one: at 1/16 the stage-2 shortcut (a 1x1 stride-2 conv of 4 input channels)
# hits a oneDNN fault in fp32 channels-last weight gradients on AVX2 CPUs (a segfault with one thread).
TINY = {
    "data": {"batch_size": 128},
    "model": {"width": 0.125},
    "train": {"epochs": 2, "device": "cpu", "compile": False},
    "optimizer": {"name": "fused_sgdw", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
}


def learnable_cifar10() -> Cifar10:
    """768 train / 256 test images whose class shifts the mean colour, so a tiny model learns something."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=1024)
    images = rng.integers(0, 200, size=(1024, 32, 32, 3)) + (labels * 5)[:, None, None, None]
    images = images.clip(0, 255).astype(np.uint8)
    return Cifar10.from_arrays(
        images[:768], labels[:768], images[768:], labels[768:], [str(i) for i in range(10)], "synthetic"
    )


def quiet_session(data, lines=None, **kwargs) -> Session:
    """A session on ``data`` whose log lines go to ``lines`` (or nowhere), without a progress bar."""
    sink = lines if lines is not None else []
    return Session(log=sink.append, bar=False, dataset=data, **kwargs)
