"""FusedSGDW as a torch optimizer: state_dict, GradScaler, LR schedulers, errors, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch

from fasttrick import BackendUnavailableError, FusedSGDW

from sgdw_helpers import (
    DEVICE_BACKENDS,
    FP32_TOL,
    assert_params_close,
    clone_params,
    grad_stream,
    make_params,
    run_steps,
)

SHAPES = [(127,), (64, 32, 3, 3), (10,)]
HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
def test_state_dict_from_torch_sgd_and_back(device, backend):
    """SGD -> FusedSGDW -> SGD mid-training continues exactly like SGD alone."""
    grads = grad_stream(SHAPES, 15)
    alone = make_params(SHAPES)
    sgd_alone = torch.optim.SGD(alone, foreach=False, **HYPER)
    run_steps(sgd_alone, alone, grads)

    params = make_params(SHAPES)
    sgd = torch.optim.SGD(params, foreach=False, **HYPER)
    run_steps(sgd, params, grads[:5])
    on_device = [p.detach().to(device).requires_grad_() for p in params]
    fused = FusedSGDW(on_device, backend=backend, **HYPER)
    fused.load_state_dict(copy.deepcopy(sgd.state_dict()))
    run_steps(fused, on_device, grads[5:10])
    back = [p.detach().cpu().requires_grad_() for p in on_device]
    sgd_again = torch.optim.SGD(back, foreach=False, **HYPER)
    sgd_again.load_state_dict(fused.state_dict())
    run_steps(sgd_again, back, grads[10:])

    assert_params_close(back, alone, **FP32_TOL)


def test_state_dict_keeps_fp32_buffer_of_bf16_params():
    """torch's loader would round the fp32 momentum buffer of a bf16 param to bf16; ours keeps it."""
    params = make_params(SHAPES, dtype=torch.bfloat16)
    opt = FusedSGDW(params, backend="reference", **HYPER)
    run_steps(opt, params, grad_stream(SHAPES, 3))
    saved = copy.deepcopy(opt.state_dict())
    restored = FusedSGDW(clone_params(params), backend="reference", **HYPER)
    restored.load_state_dict(saved)
    for p, q in zip(params, restored.param_groups[0]["params"], strict=True):
        buf = restored.state[q]["momentum_buffer"]
        assert buf.dtype == torch.float32
        assert torch.equal(buf, opt.state[p]["momentum_buffer"])
    assert restored.param_groups[0]["lr"] == 0.1  # a float lr stays a float through a checkpoint


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
def test_grad_scaler_skipped_first_step_changes_nothing(device, backend):
    """The first step overflows: no param moves and no momentum state appears (the fused-SGD bug of
    LibreYOLO #771). Later steps then match torch.optim.SGD under the same scaler, grads included."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
    reference = copy.deepcopy(model).cpu()
    ours = FusedSGDW(model.parameters(), backend=backend, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4)
    theirs = torch.optim.SGD(
        reference.parameters(), foreach=False, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4
    )
    scaler_ours = torch.amp.GradScaler(device, init_scale=128.0)
    scaler_theirs = torch.amp.GradScaler("cpu", init_scale=128.0)
    x, y = torch.randn(64, 16), torch.randn(64, 4)

    for step in range(6):
        for net, opt, scaler, dev in ((model, ours, scaler_ours, device), (reference, theirs, scaler_theirs, "cpu")):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x.to(dev)), y.to(dev))
            scaler.scale(loss).backward()
            if step == 0:
                next(net.parameters()).grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in net.parameters()]
            scaler.step(opt)
            scaler.update()
            if step == 0:
                assert all(torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
                assert not any(opt.state[p] for p in net.parameters()), "a skipped first step left state behind"
        assert scaler_ours.get_scale() == scaler_theirs.get_scale()
        assert_params_close(list(model.parameters()), list(reference.parameters()), **FP32_TOL)
        if step > 0:  # after a skipped step torch's fused SGD, like ours, leaves the grads scaled
            for p, q in zip(model.parameters(), reference.parameters(), strict=True):
                torch.testing.assert_close(p.grad.cpu(), q.grad, **FP32_TOL)  # unscaled, as torch leaves them


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
def test_found_inf_on_a_later_step_changes_nothing(device, backend):
    params = make_params(SHAPES, device=device)
    opt = FusedSGDW(params, backend=backend, **HYPER)
    run_steps(opt, params, grad_stream(SHAPES, 2))
    before = [p.detach().clone() for p in params] + [opt.state[p]["momentum_buffer"].clone() for p in params]
    opt.grad_scale = torch.tensor(4.0, device=device)
    opt.found_inf = torch.tensor(1.0, device=device)
    run_steps(opt, params, grad_stream(SHAPES, 1, seed=7))
    after = list(params) + [opt.state[p]["momentum_buffer"] for p in params]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
def test_step_lr_and_reduce_on_plateau_drive_float_lr(device, backend):
    grads = grad_stream(SHAPES, 12)
    ours, theirs = make_params(SHAPES, device=device), make_params(SHAPES)
    opt = FusedSGDW(ours, backend=backend, **HYPER)
    ref = torch.optim.SGD(theirs, foreach=False, **HYPER)
    step_lr = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (opt, ref)]
    plateau = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", factor=0.1, patience=1) for o in (opt, ref)]
    val_acc = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.4, 0.4, 0.4, 0.4]

    def schedule(sched, step):
        sched[0].step() if step < 6 else sched[1].step(val_acc[step])

    run_steps(opt, ours, grads, after_step=lambda s: schedule([step_lr[0], plateau[0]], s))
    run_steps(ref, theirs, grads, after_step=lambda s: schedule([step_lr[1], plateau[1]], s))

    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, float) and lr == ref.param_groups[0]["lr"]  # the schedulers' own floats, as for SGD
    assert lr < 0.1 * 0.25  # both StepLR halvings and at least one plateau cut happened
    assert_params_close(ours, theirs, **FP32_TOL)


def test_float_lr_set_by_hand_is_taken():
    (p,) = make_params([(10,)])
    opt = FusedSGDW([p], lr=0.1, backend="reference")
    opt.param_groups[0]["lr"] = 0.5
    start = p.detach().clone()
    p.grad = torch.ones(10)
    opt.step()
    torch.testing.assert_close(p.detach(), start - 0.5)


def test_param_groups_keep_their_own_hyperparameters():
    a, b = make_params([(50,), (60,)])
    a2, b2 = clone_params([a, b])
    groups = lambda x, y: [{"params": [x], "lr": 0.2, "weight_decay": 0.1}, {"params": [y], "momentum": 0.5}]  # noqa: E731
    grads = grad_stream([(50,), (60,)], 5)
    run_steps(FusedSGDW(groups(a, b), lr=0.05, momentum=0.9), [a, b], grads)
    run_steps(torch.optim.SGD(groups(a2, b2), lr=0.05, momentum=0.9, foreach=False), [a2, b2], grads)
    assert_params_close([a, b], [a2, b2], **FP32_TOL)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(lr=-0.1), ValueError, "Invalid learning rate"),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "1-element"),
        (dict(momentum=-0.5), ValueError, "Invalid momentum value"),
        (dict(weight_decay=-1e-4), ValueError, "Invalid weight_decay value"),
        (dict(momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
        (dict(nesterov=True), ValueError, "Nesterov momentum requires"),
        (dict(backend="fastest"), ValueError, "Unknown FusedSGDW backend"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        FusedSGDW(make_params([(3,)]), **kwargs)


def test_bad_param_group_added_later_raises():
    opt = FusedSGDW(make_params([(3,)]), lr=0.1)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        opt.add_param_group({"params": make_params([(4,)]), "momentum": -1.0})


def test_integer_params_raise():
    with pytest.raises(TypeError, match="float32, float16, bfloat16, float64, complex64"):
        FusedSGDW([torch.zeros(3, dtype=torch.int64)])


def test_explicit_unavailable_backend_raises_with_cause():
    wrong_device = "cpu" if torch.cuda.is_available() else "cuda"
    with pytest.raises(BackendUnavailableError, match=f"'{wrong_device}' is unavailable on") as info:
        FusedSGDW(make_params([(3,)]), backend=wrong_device)
    assert "tensors" in str(info.value)  # says which device the backend runs on


def test_auto_never_fails_and_picks_an_available_backend():
    from fasttrick import available_backends
    from fasttrick.ops import resolve_backend

    opt = FusedSGDW(make_params([(3,)]))
    name, _ = resolve_backend(opt.param_groups[0]["backend"], "cpu")
    assert name == available_backends("cpu")[0]
