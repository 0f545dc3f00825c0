"""The `foreach` backend: torch.optim.SGD's numerics, in place, no more memory traffic than torch's
foreach step, and AMP steps that never read a device scalar on the host.

Each case runs twice: with scalars in CPU tensors read on the host (what a CPU step does) and with
every scalar treated as a device tensor (`_host_value` -> None: what a CUDA step or a compiled one does),
so the masked, sync-free path is exercised on this CPU machine too.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fasttrick import FusedSGDW
from fasttrick.ops import foreach

SHAPES = [(1,), (127,), (33, 5), (), (0,)]
LR = 0.125  # exact in fp32, so an fp64 comparison does not hinge on how the optimizer keeps lr
TOL = {
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),  # torch.testing's fp32 default, as tests/sgdw_helpers.py
    torch.float64: dict(rtol=1e-13, atol=1e-13),
    torch.bfloat16: dict(rtol=0, atol=0),  # fp32 arithmetic rounded once: identical to the reference
    torch.float16: dict(rtol=0, atol=0),
}
TORCH_CONFIGS = [
    dict(momentum=0.9, weight_decay=5e-4),
    dict(momentum=0.9, dampening=0.1, weight_decay=5e-4, maximize=True),
    dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.0, weight_decay=5e-4),
    dict(momentum=0.0, maximize=True),
]
FASTTRICK_ONLY = [
    dict(momentum=0.9, weight_decay=5e-3, decoupled_weight_decay=True),
    dict(momentum=0.0, weight_decay=5e-3, decoupled_weight_decay=True, maximize=True),
]


@pytest.fixture(params=["host scalars", "device scalars"])
def scalars(request, monkeypatch):
    if request.param == "device scalars":
        monkeypatch.setattr(foreach, "_host_value", lambda t: None)
    return request.param


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in SHAPES]


def _run(make_opt, dtype, steps=4, amp_skip_at=None):
    """Params, buffers and grads after `steps` steps of a fixed gradient stream; with `amp_skip_at`,
    every step gets a grad scale of 4 (grads scaled by 4) and that step reports found_inf."""
    params = _params(dtype)
    opt = make_opt(params)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        scale = 1.0 if amp_skip_at is None else 4.0
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * scale).to(dtype)
        if amp_skip_at is not None:
            opt.grad_scale = torch.tensor(scale)
            opt.found_inf = torch.tensor(float(step == amp_skip_at))
        opt.step()
    buffers = [opt.state[p].get("momentum_buffer") for p in params]
    return [p.detach() for p in params], buffers, [p.grad for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=str)
def test_matches_torch_sgd(scalars, dtype, config):
    ours = _run(lambda ps: FusedSGDW(ps, lr=LR, backend="foreach", **config), dtype)
    torch_ = _run(lambda ps: torch.optim.SGD(ps, lr=LR, foreach=True, **config), dtype)
    for a, e in zip(ours[0] + ours[1], torch_[0] + torch_[1], strict=True):
        if e is not None:
            torch.testing.assert_close(a, e, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("config", TORCH_CONFIGS + FASTTRICK_ONLY, ids=str)
@pytest.mark.parametrize("amp", [False, True], ids=["plain", "amp"])
def test_matches_reference(scalars, dtype, config, amp):
    """fp16/bf16 params keep fp32 buffers; under AMP the grads are written back unscaled and the
    step that reports found_inf is skipped."""
    skip = 2 if amp else None
    ours = _run(lambda ps: FusedSGDW(ps, lr=LR, backend="foreach", **config), dtype, amp_skip_at=skip)
    ref = _run(lambda ps: FusedSGDW(ps, lr=LR, backend="reference", **config), dtype, amp_skip_at=skip)
    for a, e in zip(ours[0] + ours[1] + ours[2], ref[0] + ref[1] + ref[2], strict=True):
        if e is not None:
            if a.dtype != dtype:
                assert a.dtype == torch.float32  # a low-precision param's momentum buffer
            torch.testing.assert_close(a, e, **TOL[dtype if a.dtype == dtype else torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", TORCH_CONFIGS + FASTTRICK_ONLY, ids=str)
def test_skipped_step_changes_nothing(scalars, dtype, config):
    params = _params(dtype)
    opt = FusedSGDW(params, lr=LR, backend="foreach", **config)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # creates the buffers
    for p in params:
        p.grad = torch.full_like(p, float("inf")) if p.numel() > 1 else torch.full_like(p, float("nan"))
    before = [
        t.clone() for p in params for t in (p.detach(), p.grad, opt.state[p].get("momentum_buffer")) if t is not None
    ]
    opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(1.0)
    opt.step()
    after = [t for p in params for t in (p.detach(), p.grad, opt.state[p].get("momentum_buffer")) if t is not None]
    for b, a in zip(before, after, strict=True):
        assert torch.equal(b.reshape(-1).view(torch.uint8), a.reshape(-1).view(torch.uint8))  # bit for bit


class _MemoryTraffic(TorchDispatchMode):
    """Bytes each aten op moves: every tensor it reads, every tensor it writes (a mutated argument, a
    new output), 0-d scalars left out. Also counts host reads of a tensor's value (`.item()`)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.host_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.host_reads += 1
        schema = func._schema
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            written = arg.alias_info is not None and arg.alias_info.is_write
            self.bytes += _nbytes(value) * ((0 if arg.is_out else 1) + (1 if written else 0))
        returns = out if isinstance(out, (tuple, list)) and schema.returns and len(schema.returns) > 1 else [out]
        for ret, value in zip(schema.returns, returns, strict=False):
            if ret.alias_info is None:  # a new tensor (an alias was counted as its argument)
                self.bytes += _nbytes(value)
        return out


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() if value.dim() > 0 else 0
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _traffic_of_second_step(make_opt, amp=False):
    params = _params(torch.float32)
    opt = make_opt(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    if amp:
        opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(0.0)
    with _MemoryTraffic() as traffic:
        opt.step()
    return traffic


@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=str)
def test_no_more_memory_traffic_than_torch_foreach(scalars, config):
    """fp32, float lr, after the first step: at most torch's bytes (11 passes with momentum and L2).
    With device scalars lr multiplies the update first (2 passes more) unless the step is plain."""
    ours = _traffic_of_second_step(lambda ps: FusedSGDW(ps, lr=LR, backend="foreach", **config))
    theirs = _traffic_of_second_step(lambda ps: torch.optim.SGD(ps, lr=LR, foreach=True, **config))
    numel = sum(torch.Size(s).numel() for s in SHAPES)
    extra = 2 * 4 * numel if scalars == "device scalars" else 0  # lr * u into a temporary, read again
    assert ours.bytes <= theirs.bytes + extra, (ours.bytes / (4 * numel), theirs.bytes / (4 * numel))


@pytest.mark.parametrize("config", TORCH_CONFIGS[:3], ids=str)
def test_amp_step_reads_no_device_scalar_on_the_host(config, monkeypatch):
    monkeypatch.setattr(foreach, "_host_value", lambda t: None)
    traffic = _traffic_of_second_step(lambda ps: FusedSGDW(ps, lr=LR, backend="foreach", **config), amp=True)
    assert traffic.host_reads == 0
