"""Shared test setup. Runs on CPU-only machines; CUDA cases join in when a GPU is present."""

import os

import torch

# Triton must pick its interpreter before it is first imported: without a GPU, its kernels then run
# on CPU tensors, so the same kernel code is tested here and in CI.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
