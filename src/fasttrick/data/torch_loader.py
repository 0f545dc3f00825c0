"""The whole split resident on the device as one uint8 tensor; each batch is gathered and augmented
with a handful of batched tensor ops (as cifar10-airbench does), no per-sample Python.

Memory: the split is held once (153.6 MB uint8 for the 50 000 training images). No padded or
normalised copy of it is ever made; per batch the gather reads 512 x 3 KB and writes the output.
On the CPU the tensor shares the NumPy array's memory, so not even the host copy is duplicated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .plan import training_plan


class TorchLoader:
    """Iterable of (images, labels): images (B, 3, 32, 32) channels-last in ``dtype`` on ``device``,
    labels (B,) int64. Training: seeded per-epoch shuffle, pad-4 translate, flip, drop-last.
    Evaluation: every image once, in order, no augmentation, last batch partial."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        train: bool,
        batch_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
    ):
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.device, self.dtype = device, dtype
        self.epoch = 0
        self.num_samples = len(images)
        self._images = torch.from_numpy(images).to(device)  # (N, 32, 32, 3) uint8, the only copy on the device
        self._labels = torch.from_numpy(labels).to(device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device)
        # (x - mean) * (1 / std), in fp32, the same arithmetic as DALI's crop_mirror_normalize.
        self._inv_std = 1 / torch.tensor(std, dtype=torch.float32, device=device)
        self._positions = torch.arange(32, device=device)

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (each pass otherwise advances the epoch by one)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            for start in range(0, self.num_samples, self.batch_size):
                batch = slice(start, start + self.batch_size)
                yield self._normalize(self._images[batch]), self._labels[batch]
            return
        epoch, self.epoch = self.epoch, self.epoch + 1
        plan = training_plan(self.num_samples, self.batch_size, self.seed, epoch)
        # One host-to-device copy of the plan per epoch (~0.6 MB), not one per batch.
        order, shifts, flips = (torch.from_numpy(a).to(self.device) for a in (plan.order, plan.shifts, plan.flips))
        for start in range(0, len(order), self.batch_size):
            batch = slice(start, start + self.batch_size)
            indices = order[batch]
            yield self._augment(indices, shifts[batch], flips[batch]), self._labels[indices]

    def _augment(self, indices: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Translate by ``shifts`` with zero fill, then flip where ``flips``: see plan.py for the formula."""
        positions = self._positions
        rows = positions + shifts[:, :1]  # (B, 32): source row of each output row
        cols = torch.where(flips[:, None].bool(), positions.flip(0), positions) + shifts[:, 1:]
        inside = ((rows >= 0) & (rows < 32))[:, :, None] & ((cols >= 0) & (cols < 32))[:, None, :]
        # One gather straight from the resident split: (B,1,1), (B,32,1), (B,1,32) broadcast to (B,32,32[,3]).
        pixels = self._images[indices[:, None, None], rows.clamp(0, 31)[:, :, None], cols.clamp(0, 31)[:, None, :]]
        return self._normalize(pixels * inside[..., None])

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 32, 32, 3) -> (B, 3, 32, 32) view whose memory is NHWC, i.e. channels-last."""
        normalized = (pixels.float() - self._mean) * self._inv_std
        return normalized.to(self.dtype).permute(0, 3, 1, 2)
