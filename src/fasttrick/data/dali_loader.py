"""NVIDIA DALI loader: one pipeline definition for ``device="gpu"`` and ``device="cpu"``.

The CPU variant is built with ``device_id=None``, which keeps DALI away from CUDA entirely, so CI on
a machine without a GPU runs the very graph training uses. Images are fed as raw uint8 HWC arrays
through ``external_source``: no JPEG decoding per epoch (DALI's GPU decoder covers JPEG only and
CIFAR-10 is decoded once into the cache anyway).

The per-epoch permutation, shifts and flips come from :func:`plan.training_plan` through the
external source rather than from DALI's random operators, so an epoch depends on (seed, epoch)
alone and matches the torch loader batch for batch.

Importing this module imports DALI; ``fasttrick.data`` imports it only when the dali backend is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from .plan import training_plan

# DALI has no bfloat16: bf16 batches leave DALI as fp32 and are cast by torch on the same device.
_DALI_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16, torch.bfloat16: types.FLOAT}


@pipeline_def
def cifar10_pipeline(feed, device: str, train: bool, mean, std, dali_dtype):
    """uint8 HWC batches from ``feed`` -> [pad-4 translate ->] [flip ->] normalise -> HWC ``dali_dtype``."""
    if train:
        images, labels, shifts, flips = fn.external_source(
            source=feed,
            num_outputs=4,
            batch=True,
            layout=["HWC", "", "", ""],
            dtype=[types.UINT8, types.INT64, types.INT32, types.INT32],
        )
    else:
        images, labels = fn.external_source(
            source=feed, num_outputs=2, batch=True, layout=["HWC", ""], dtype=[types.UINT8, types.INT64]
        )
    if device == "gpu":
        # One 1.5 MB host-to-device copy per batch of 512; shifts and flips stay on the host, where
        # DALI wants argument inputs.
        images, labels = images.gpu(), labels.gpu()
    if train:
        # A 32x32 window anchored at (dy, dx) in [-4, 4]; the part outside the image is zero-filled.
        images = fn.slice(
            images,
            shifts,
            [32, 32],
            axis_names="HW",
            normalized_anchor=False,
            normalized_shape=False,
            out_of_bounds_policy="pad",
            fill_values=0,
        )
    images = fn.crop_mirror_normalize(
        images,
        mirror=flips if train else 0,
        mean=mean,
        std=std,
        dtype=dali_dtype,
        output_layout="HWC",  # NHWC memory, which torch sees as a channels-last NCHW tensor after permute
    )
    return images, labels


class _BatchFeed:
    """External source: the batches of the current epoch, then StopIteration (which ends DALI's epoch)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool, batch_size: int, seed: int):
        self.images, self.labels = images, labels
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.next_batch = 0
        if self.train:
            self.plan = training_plan(len(self.images), self.batch_size, self.seed, epoch)

    def __call__(self):
        start = self.next_batch * self.batch_size
        if self.train:
            if start >= len(self.plan.order):
                raise StopIteration
            indices, shifts, flips = self.plan.batch(self.next_batch, self.batch_size)
            self.next_batch += 1
            # images[indices] gathers this batch only (1.5 MB); the split itself is never copied.
            return self.images[indices], self.labels[indices], shifts, flips
        if start >= len(self.images):
            raise StopIteration
        self.next_batch += 1
        # Basic slicing: views of the split, no copy; the last batch is partial.
        return self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]


class DaliLoader:
    """Same interface and batches as :class:`~fasttrick.data.torch_loader.TorchLoader`, produced by DALI."""

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
        num_threads: int,
    ):
        if dtype not in _DALI_DTYPES:
            raise ValueError(f"dtype must be one of {list(_DALI_DTYPES)}, got {dtype}")
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.device, self.dtype = device, dtype
        self.epoch = 0
        self.num_samples = len(images)
        self._feed = _BatchFeed(images, labels, train, batch_size, seed)
        # None keeps DALI off CUDA entirely (DALI's CPU-only mode; -1 would still look for a GPU).
        device_id = None
        if device.type == "cuda":
            device_id = device.index if device.index is not None else torch.cuda.current_device()
        self._pipeline_args = dict(
            feed=self._feed,
            device="gpu" if device.type == "cuda" else "cpu",
            train=train,
            mean=list(mean),
            std=list(std),
            dali_dtype=_DALI_DTYPES[dtype],
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            seed=seed,  # no DALI random operator is used; set for determinism of anything DALI adds
        )
        self._iterator: DALIGenericIterator | None = None
        self._epoch_finished = True

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (each pass otherwise advances the epoch by one)."""
        self.epoch = epoch

    def _build(self) -> DALIGenericIterator:
        pipeline = cifar10_pipeline(**self._pipeline_args)
        pipeline.build()
        # size=-1: the epoch ends when the feed raises StopIteration. prepare_first_batch=False: nothing
        # runs before the first pass has set up its epoch in the feed.
        return DALIGenericIterator(
            [pipeline],
            ["images", "labels"],
            size=-1,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            prepare_first_batch=False,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if not self._epoch_finished:
            # The previous pass was abandoned mid-epoch: its batches sit in DALI's prefetch queue and
            # reset() is ignored mid-epoch, so start over with a fresh pipeline (~20 ms to build).
            self._iterator = None
        self._feed.start_epoch(epoch)
        if self._iterator is None:
            self._iterator = self._build()
        else:
            self._iterator.reset()
        self._epoch_finished = False
        for (outputs,) in self._iterator:
            images = outputs["images"].permute(0, 3, 1, 2)  # NHWC memory -> channels-last NCHW view
            yield images.to(self.dtype), outputs["labels"]
        self._epoch_finished = True
