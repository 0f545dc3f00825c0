"""CIFAR-10 for fast training: decoded once into a uint8 cache, augmented where the model runs.

Public API::

    from fasttrick.data import build_loader, load_cifar10

    data = load_cifar10()                       # Cifar10: uint8 NHWC arrays, held once in host memory
    train = build_loader("train", dataset=data, device="cuda", dtype=torch.bfloat16, seed=0)
    test = build_loader("test", dataset=data, device="cuda", dtype=torch.bfloat16)
    for epoch in range(epochs):
        train.set_epoch(epoch)                  # optional: each pass otherwise advances by one
        for images, labels in train: ...

``build_loader(split, *, dataset=None, root=None, backend="auto", device=None, dtype=torch.float32,
batch_size=512, seed=0, num_threads=None)`` returns a loader that is

- an iterable of ``(images, labels)`` batches: ``images`` is (B, 3, 32, 32) in ``dtype`` on ``device``
  with channels-last memory (``images.is_contiguous(memory_format=torch.channels_last)``), normalised
  per channel with the training set's mean and std; ``labels`` is (B,) int64 on ``device``;
- sized: ``len(loader)`` batches per pass. Training drops the last partial batch (50 000 // 512 = 97
  batches of 512, static shapes for ``torch.compile`` and CUDA graphs); evaluation yields all 10 000
  test images exactly once, in order, the last batch partial (19 x 512 + 272);
- reproducible: training pass ``e`` shuffles and augments from (``seed``, ``e``) alone. ``set_epoch(e)``
  picks the epoch of the next pass (for resuming); without it each pass advances the epoch by one.

Training augmentation: pad-4 random translate (zero fill), random horizontal flip, per-channel
normalise. Evaluation: normalise only. ``backend`` picks the implementation:

- ``"dali"``: NVIDIA DALI, on the GPU for a CUDA ``device``, CPU-only (``device_id=None``) otherwise;
- ``"torch"``: the split resident on ``device`` as one uint8 tensor, augmented with batched tensor ops;
- ``"auto"``: ``"dali"`` when DALI imports, else ``"torch"``.

For the same (seed, epoch) both backends yield the same batches, up to float rounding.

Data: ``root`` (a config's ``data.root``) or ``$FASTTRICK_DATA`` names a directory or archive with
CIFAR-10 as an image folder or torchvision's python batches; with neither, torchvision downloads it.
The decoded cache lives in ``$FASTTRICK_CACHE`` (default ``~/.cache/fasttrick``);
``python -m fasttrick.data prepare [PATH]`` builds it ahead of time. Problems with a source raise
:class:`DataSourceError`, whose message says where it looked and what to do.

This package imports nothing else from fasttrick, and DALI only when the dali backend is built.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .plan import PAD, EpochPlan, training_plan
from .sources import CACHE_ENV, DATA_ENV, IMAGE_SHAPE, NUM_TEST, NUM_TRAIN, Cifar10, DataSourceError, load_cifar10
from .torch_loader import TorchLoader

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "IMAGE_SHAPE",
    "NUM_TEST",
    "NUM_TRAIN",
    "PAD",
    "Cifar10",
    "DataSourceError",
    "EpochPlan",
    "TorchLoader",
    "build_loader",
    "dali_import_error",
    "load_cifar10",
    "training_plan",
]

BACKENDS = ("auto", "dali", "torch")


def dali_import_error() -> ImportError | None:
    """None when DALI imports here, else the ImportError (kept so an explicit request can show it)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return err
    return None


def build_loader(
    split: str,
    *,
    dataset: Cifar10 | None = None,
    root: str | os.PathLike | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 512,
    seed: int = 0,
    num_threads: int | None = None,
):
    """A loader over ``split`` ("train" augments and shuffles, "test" does not); see the module docstring.

    ``dataset`` shares one loaded copy between the train and test loaders (else ``load_cifar10(root)``
    is called). ``device`` defaults to CUDA when available. ``num_threads`` sizes DALI's CPU worker
    pool (default: all cores, at most 8). An explicitly requested ``backend="dali"`` that cannot
    import DALI raises ImportError chained to the original one; ``"auto"`` falls back to torch.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if batch_size < 1 or seed < 0:
        raise ValueError(f"batch_size must be >= 1 and seed >= 0, got batch_size={batch_size}, seed={seed}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = dataset if dataset is not None else load_cifar10(root)
    images, labels = dataset.split(split)
    common: dict[str, Any] = dict(
        train=split == "train",
        batch_size=batch_size,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        dtype=dtype,
        seed=seed,
    )

    if backend != "torch":
        error = dali_import_error()
        if error is None:
            from .dali_loader import DaliLoader

            return DaliLoader(images, labels, num_threads=num_threads or min(8, os.cpu_count() or 1), **common)
        if backend == "dali":
            raise ImportError(
                "backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120 (Linux x86_64), "
                "or use backend='torch' / 'auto'."
            ) from error
    return TorchLoader(images, labels, **common)
