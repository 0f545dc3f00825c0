"""Builders and comparisons shared by the FusedSGDW tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fasttrick import available_backends

# torch.testing's default fp32 tolerance, the one torch's own fused-vs-for-loop SGD test uses.
FP32_TOL = dict(rtol=1.3e-6, atol=1e-5)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEVICE_BACKENDS = [(d, b) for d in DEVICES for b in available_backends(d)]

# Shapes past every vector width and block size, odd ones included (torch#191763 hid behind tiny
# shapes): 1, 127, 278 011 (apex's test size), a conv weight, a 0-dim and a zero-element tensor.
SHAPES = [(1,), (127,), (278011,), (64, 32, 3, 3), (), (0,)]


def make_params(shapes, dtype=torch.float32, device="cpu", seed=0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype=dtype, device=device).requires_grad_() for s in shapes]


def clone_params(params: list[Tensor], dtype: torch.dtype | None = None) -> list[Tensor]:
    return [p.detach().clone().to(dtype or p.dtype).requires_grad_() for p in params]


def grad_stream(shapes, steps: int, seed=1) -> list[list[Tensor]]:
    """Per step, one fp32 CPU gradient per shape (the same stream for every optimizer compared)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


def run_steps(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    grads: list[list[Tensor]],
    has_grad: Callable[[int, int], bool] = lambda step, index: True,
    after_step: Callable[[int], None] = lambda step: None,
) -> None:
    """Feeds `grads` step by step; `has_grad(step, i)` False leaves param i without a grad (frozen)."""
    for step, step_grads in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, step_grads, strict=True)):
            p.grad = g.to(dtype=p.dtype, device=p.device) if has_grad(step, i) else None
        optimizer.step()
        after_step(step)


def assert_params_close(actual: list[Tensor], expected: list[Tensor], **tol) -> None:
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a.detach().cpu(), e.detach().cpu(), **tol, msg=lambda m, i=i: f"param {i}: {m}")


def max_abs_error(values: list[Tensor], reference: list[Tensor]) -> float:
    errors = [
        (v.detach().double().cpu() - r.detach().double().cpu()).abs().max().item()
        for v, r in zip(values, reference, strict=True)
        if v.numel()
    ]
    return max(errors, default=0.0)
