"""fasttrick.sgdw (the functional form), differentiable steps, the per-tensor path warning, opt.backends(),
and what a step that raises leaves behind, each against torch.optim.SGD."""

from __future__ import annotations

import warnings

import pytest
import torch

import fasttrick
from fasttrick import FusedSGDW, PerTensorPathWarning, available_backends, sgdw
from fasttrick.optim import functional

CPU_BACKENDS = available_backends("cpu")
HYPER = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.05)


def _tensors(seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) for s in [(7,), (3, 5), ()]]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(3)]
    return params, grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_three_functional_steps_equal_fusedsgdw_and_torch_sgd(backend, nesterov):
    hyper = dict(HYPER, dampening=0.0) if nesterov else HYPER
    start, grads = _tensors()
    functional_params = [p.clone() for p in start]
    buffers: list[torch.Tensor | None] = [None] * len(start)
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    opt = FusedSGDW(ours, nesterov=nesterov, backend=backend, **hyper)
    reference = torch.optim.SGD(theirs, nesterov=nesterov, **hyper)
    for step_grads in grads:
        sgdw(functional_params, step_grads, buffers, nesterov=nesterov, backend=backend, **hyper)
        for optimizer, params in ((opt, ours), (reference, theirs)):
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for f, o, t in zip(functional_params, ours, theirs, strict=True):
        torch.testing.assert_close(f, o.detach(), rtol=0, atol=0)
        torch.testing.assert_close(f, t.detach())
    for f_buf, o in zip(buffers, ours, strict=True):
        torch.testing.assert_close(f_buf, opt.state[o]["momentum_buffer"], rtol=0, atol=0)


def test_functional_hyperparameters_are_keyword_only_and_buffers_checked():
    params, grads = _tensors()
    with pytest.raises(TypeError):
        sgdw(params, grads[0], [None] * 3, 0.1)  # type: ignore[misc]
    with pytest.raises(ValueError, match="one per param"):
        sgdw(params, grads[0], [], lr=0.1, momentum=0.9)
    sgdw(params, grads[0], [], lr=0.1)  # momentum 0: no buffers, as torch's functional sgd
    assert fasttrick.sgdw is sgdw


# torch.optim.SGD(differentiable=True) differentiates one step with momentum (its next step writes in place
# into the buffer that autograd saved), so with momentum the comparison is one step from a given buffer.
@pytest.mark.parametrize(("momentum", "steps"), [(0.0, 3), (0.9, 1)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("nesterov", [False, True])
def test_differentiable_step_gives_torch_sgd_params_and_lr_gradient(momentum, steps, weight_decay, nesterov):
    if nesterov and momentum == 0:
        pytest.skip("nesterov needs momentum")

    def run(cls):
        w0 = torch.linspace(-1, 1, 6, requires_grad=True)
        lr = torch.tensor(0.1, requires_grad=True)
        p = w0.clone()  # a non-leaf param, as torch's own differentiable tests use
        opt = cls([p], lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, differentiable=True)
        if momentum:
            opt.state[p]["momentum_buffer"] = torch.sin(torch.arange(6.0))
        for step in range(steps):
            p.grad = torch.cos(torch.arange(6.0) + step)
            opt.step()
        loss = (p**2).sum()
        return (p.detach(), *torch.autograd.grad(loss, (lr, w0)))

    ours, theirs = run(FusedSGDW), run(torch.optim.SGD)
    for name, a, b in zip(("params", "d(loss)/d(lr)", "d(loss)/d(w0)"), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert ours[1].abs() > 0  # the lr gradient is real, not a zero from a detached step


def test_slow_path_warns_once_per_cause(monkeypatch):
    monkeypatch.setattr(functional, "_WARNED", set())
    base = torch.zeros(4, 6)
    view = base[:, ::2].requires_grad_()  # a strided view: not dense in memory
    expanded = torch.zeros(5, requires_grad=True)
    opt = FusedSGDW([view, expanded], lr=0.1, momentum=0.9, backend="foreach")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            view.grad = torch.ones(4, 3)
            expanded.grad = torch.ones(1).expand(5)  # an expanded grad
            opt.step()
    messages = [str(w.message) for w in record if issubclass(w.category, PerTensorPathWarning)]
    assert len(messages) == 2, messages
    assert any("strided view" in m for m in messages) and any("expanded" in m for m in messages)
    torch.testing.assert_close(expanded.detach(), torch.full((5,), -0.1 - 0.1 * 1.9))


def test_contiguous_tensors_do_not_warn(monkeypatch):
    monkeypatch.setattr(functional, "_WARNED", set())
    p = torch.zeros(5, requires_grad=True)
    p.grad = torch.ones(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerTensorPathWarning)
        FusedSGDW([p], lr=0.1, momentum=0.9).step()


def test_backends_names_the_backend_of_each_device_and_dtype():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = FusedSGDW([{"params": [a, b]}, {"params": [torch.zeros(2, requires_grad=True)], "backend": "reference"}])
    cpu = torch.device("cpu")
    assert opt.backends() == [
        {(cpu, torch.float32): CPU_BACKENDS[0], (cpu, torch.float64): CPU_BACKENDS[0]},
        {(cpu, torch.float32): "reference"},
    ]
    assert FusedSGDW([a], differentiable=True).backends() == [{(cpu, torch.float32): "reference"}]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("out of memory"), KeyboardInterrupt(), ValueError("bad")])
def test_a_step_that_raises_between_launches_keeps_no_new_buffer(monkeypatch, error):
    p32 = torch.zeros(3, requires_grad=True)
    p64 = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # another dtype: a second launch
    opt = FusedSGDW([p32, p64], lr=0.1, momentum=0.9, backend="reference")
    launches = []
    real = functional._update_function

    def second_launch_raises(*args):
        launches.append(args)
        if len(launches) == 2:
            raise error
        return real(*args)

    monkeypatch.setattr(functional, "_update_function", second_launch_raises)
    p32.grad, p64.grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
    with pytest.raises(type(error)):
        opt.step()
    assert all("momentum_buffer" not in opt.state.get(p, {}) for p in (p32, p64))
    monkeypatch.setattr(functional, "_update_function", real)
    opt.step()  # the next step starts momentum afresh, as torch.optim.SGD's first step
    torch.testing.assert_close(opt.state[p64]["momentum_buffer"], torch.ones(3, dtype=torch.float64))


def test_a_bad_grad_keeps_no_new_buffer():
    good, bad = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = FusedSGDW([good, bad], lr=0.1, momentum=0.9)
    good.grad = torch.ones(3)
    bad.grad = torch.ones(3)
    bad.grad.set_(torch.ones(4))  # a grad whose shape no longer matches its param
    with pytest.raises(RuntimeError):
        opt.step()
    assert all("momentum_buffer" not in opt.state.get(p, {}) for p in (good, bad))


def test_a_param_listed_twice_steps_as_in_torch_sgd():
    def run(cls):
        p, q = torch.ones(4, requires_grad=True), torch.full((2,), 2.0, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the duplicate
            opt = cls([p, q, p], lr=0.1, momentum=0.9, weight_decay=0.1)
        for step in range(3):
            p.grad, q.grad = torch.full((4,), 1.0 + step), torch.full((2,), -1.0)
            opt.step()
        return p.detach(), q.detach(), opt.state[p]["momentum_buffer"]

    for a, b in zip(run(FusedSGDW), run(torch.optim.SGD), strict=True):
        torch.testing.assert_close(a, b)


def test_loading_an_adam_state_dict_names_the_problem():
    p = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    adam.step()
    with pytest.raises(ValueError, match=r"no 'momentum'.*'betas': an Adam-family optimizer's"):
        FusedSGDW([p], lr=0.1, momentum=0.9).load_state_dict(adam.state_dict())
