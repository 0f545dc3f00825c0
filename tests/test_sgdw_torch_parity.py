"""FusedSGDW behaves like torch.optim.SGD where client code can tell: lr kept as given,
every input torch takes, torch's keyword arguments, DTensor parameters and param groups over devices."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fasttrick import FusedSGDW

from sgdw_helpers import DEVICE_BACKENDS, FP32_TOL, assert_params_close

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
CPU_BACKENDS = [b for d, b in DEVICE_BACKENDS if d == "cpu"]


def _steps(optimizers, params_per_opt, grads_per_step, after_step=lambda: None):
    """Same grads for every optimizer; `grads_per_step[k][i]` is a function of the param (layout)."""
    for step_grads in grads_per_step:
        for opt, params in zip(optimizers, params_per_opt, strict=True):
            for p, make_grad in zip(params, step_grads, strict=True):
                p.grad = make_grad(p)
            opt.step()
        after_step()


# --- lr: a float stays a float, a tensor stays the caller's own --------------------------------------


def _schedulers(opt):
    """Every torch LR scheduler that is cheap to build, by name."""
    s = torch.optim.lr_scheduler
    return {
        "StepLR": lambda: s.StepLR(opt, step_size=2, gamma=0.5),
        "MultiStepLR": lambda: s.MultiStepLR(opt, milestones=[1, 3]),
        "ConstantLR": lambda: s.ConstantLR(opt, factor=0.5, total_iters=2),
        "LinearLR": lambda: s.LinearLR(opt, start_factor=0.25, total_iters=3),
        "ExponentialLR": lambda: s.ExponentialLR(opt, gamma=0.9),
        "PolynomialLR": lambda: s.PolynomialLR(opt, total_iters=4, power=2.0),
        "CosineAnnealingLR": lambda: s.CosineAnnealingLR(opt, T_max=4, eta_min=1e-3),
        "CosineAnnealingWarmRestarts": lambda: s.CosineAnnealingWarmRestarts(opt, T_0=2),
        "LambdaLR": lambda: s.LambdaLR(opt, lambda epoch: 0.9**epoch),
        "MultiplicativeLR": lambda: s.MultiplicativeLR(opt, lambda epoch: 0.8),
        "CyclicLR": lambda: s.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2),
        "OneCycleLR": lambda: s.OneCycleLR(opt, max_lr=0.1, total_steps=10),
        "SequentialLR": lambda: s.SequentialLR(
            opt, [s.ConstantLR(opt, factor=0.5, total_iters=1), s.ExponentialLR(opt, gamma=0.9)], milestones=[2]
        ),
        "ReduceLROnPlateau": lambda: s.ReduceLROnPlateau(opt, factor=0.5, patience=0),
    }


@pytest.mark.parametrize("name", list(_schedulers(None)))
def test_every_lr_scheduler_logs_json_floats_like_torch_sgd(name):
    """get_last_lr() is json-serialisable and equal to torch.optim.SGD's, step by step, and the
    param group keeps a float (Lightning's LearningRateMonitor reads group["lr"])."""
    ours = torch.zeros(3, requires_grad=True)
    theirs = torch.zeros(3, requires_grad=True)
    opt = FusedSGDW([ours], **HYPER)
    ref = torch.optim.SGD([theirs], **HYPER)
    scheds = [_schedulers(o)[name]() for o in (opt, ref)]
    logged = {id(opt): [], id(ref): []}
    for _ in range(5):
        for o, p in ((opt, ours), (ref, theirs)):
            p.grad = torch.ones(3)
            o.step()
        for sched, o in zip(scheds, (opt, ref), strict=True):
            sched.step(1.0) if name == "ReduceLROnPlateau" else sched.step()
            logged[id(o)].append(o.param_groups[0]["lr"])  # a logger keeping the object it reads
            json.dumps(sched.get_last_lr())
    assert all(type(lr) is float for lr in logged[id(opt)])
    assert logged[id(opt)] == logged[id(ref)]
    assert scheds[0].get_last_lr() == scheds[1].get_last_lr()
    torch.testing.assert_close(ours, theirs, **FP32_TOL)


def test_lightning_like_lr_snapshot_and_state_dict_snapshot_keep_their_values():
    (p,) = [torch.zeros(3, requires_grad=True)]
    opt = FusedSGDW([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    snapshot, seen = opt.state_dict(), []
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    assert seen == [0.1, 0.1, 0.05, 0.05]  # an lr tensor changed in place would log [0.025] * 4
    assert snapshot["param_groups"][0]["lr"] == 0.1


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
def test_tensor_lr_is_the_callers_own_object_read_every_step(device, backend):
    for lr in (torch.tensor(0.1, device=device), torch.tensor([0.1], dtype=torch.float64, device=device)):
        p = torch.zeros(4, device=device, requires_grad=True)
        opt = FusedSGDW([p], lr=lr, backend=backend)
        assert opt.param_groups[0]["lr"] is lr
        for value in (0.5, 0.25):
            lr.fill_(value)  # in place, as a scheduler of a tensor lr or the caller does
            p.grad = torch.ones(4, device=device)
            opt.step()
        torch.testing.assert_close(p.detach().cpu(), torch.full((4,), -0.75))
        assert opt.param_groups[0]["lr"] is lr


def test_tensor_lr_on_another_device_is_a_clear_error():
    p = torch.zeros(3, requires_grad=True)
    opt = FusedSGDW([p], lr=0.1)
    opt.param_groups[0]["lr"] = torch.tensor(0.1, device="meta")  # CPU-only here: meta stands in for a GPU
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="lr tensor is on meta but parameters are on cpu"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
def test_fp64_step_is_exactly_torchs(device, backend):
    """lr 0.1 in fp64 throughout: one step gives -0.1, not -0.10000000149 (an fp32 lr)."""
    p = torch.zeros(1000, dtype=torch.float64, device=device, requires_grad=True)
    p.grad = torch.ones_like(p)
    FusedSGDW([p], lr=0.1, backend=backend).step()
    assert torch.equal(p.detach().cpu(), torch.full((1000,), -0.1, dtype=torch.float64))


# --- every input torch.optim.SGD takes ---------------------------------------------------------------


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()  # keeps t's strides


# name -> (make param, make grad for it): each a layout the kernels must walk or hand to the per-tensor path.
LAYOUTS = {
    "transposed": (lambda: _leaf(torch.randn(6, 9).t()), lambda p: torch.randn(p.shape).t().contiguous().t()),
    "channels_last": (
        lambda: _leaf(torch.randn(5, 3, 4, 4).to(memory_format=torch.channels_last)),
        lambda p: torch.randn(p.shape).to(memory_format=torch.channels_last),
    ),
    "strided_view": (lambda: _leaf(torch.randn(4, 10)[:, ::2]), lambda p: torch.randn(p.shape)),
    "offset_view": (lambda: _leaf(torch.randn(40)[3:30]), lambda p: torch.randn(p.shape)),
    "expanded_grad": (lambda: _leaf(torch.randn(4, 5)), lambda p: torch.randn(1, 5).expand(4, 5)),
    "contiguous_grad_of_transposed_param": (lambda: _leaf(torch.randn(6, 9).t()), lambda p: torch.randn(p.shape)),
    "conv1x1_channels_last_grad_contiguous": (
        lambda: _leaf(torch.randn(8, 4, 1, 1).to(memory_format=torch.channels_last)),
        lambda p: torch.randn(p.shape),  # strides differ from the param's only in size-1 dims
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_strided_layout_matches_torch_sgd(backend, layout):
    make_param, make_grad = LAYOUTS[layout]
    torch.manual_seed(0)
    ours = [make_param(), torch.randn(7, requires_grad=True)]
    theirs = [_leaf(torch.empty_strided(p.shape, p.stride()).copy_(p.detach())) for p in ours]  # same strides
    torch.manual_seed(1)
    grads = [[make_grad, lambda p: torch.randn(p.shape)] for _ in range(4)]
    grads = [[g(p) for g, p in zip(step, ours, strict=True)] for step in grads]
    opt = FusedSGDW(ours, backend=backend, nesterov=True, **HYPER)
    ref = torch.optim.SGD(theirs, foreach=False, nesterov=True, **HYPER)
    _steps([opt, ref], [ours, theirs], [[lambda p, g=g: g.clone() for g in step] for step in grads])
    assert_params_close(ours, theirs, **FP32_TOL)
    assert ours[0].stride() == theirs[0].stride()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_momentum_buffer_strides_differing_in_size1_dims_are_taken(backend):
    """A 1x1 convolution's channels-last param with a contiguous buffer from a checkpoint."""
    conv = torch.nn.Conv2d(4, 8, 1, bias=False).to(memory_format=torch.channels_last)
    ref_conv = copy.deepcopy(conv)
    x = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last)
    sgd = torch.optim.SGD(ref_conv.parameters(), foreach=False, **HYPER)
    ref_conv(x).sum().backward()
    sgd.step()
    state = copy.deepcopy(sgd.state_dict())
    state["state"][0]["momentum_buffer"] = state["state"][0]["momentum_buffer"].contiguous()
    conv.load_state_dict(ref_conv.state_dict())
    opt = FusedSGDW(conv.parameters(), backend=backend, **HYPER)
    opt.load_state_dict(state)
    sgd.load_state_dict(state)
    for net, o in ((conv, opt), (ref_conv, sgd)):
        o.zero_grad()
        net(x).sum().backward()
        o.step()
    torch.testing.assert_close(conv.weight, ref_conv.weight, **FP32_TOL)


@pytest.mark.parametrize("dampening", [0.0, 0.3])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sparse_gradients_match_torch_sgd(backend, dampening):
    """nn.Embedding(sparse=True); torch.optim.SGD itself refuses weight decay with sparse grads."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 4, sparse=True)
    ref = copy.deepcopy(emb)
    hyper = dict(lr=0.1, momentum=0.9, dampening=dampening)
    opt, sgd = FusedSGDW(emb.parameters(), backend=backend, **hyper), torch.optim.SGD(ref.parameters(), **hyper)
    for indices in ([1, 2, 2], [3, 1], [7]):
        for net, o in ((emb, opt), (ref, sgd)):
            o.zero_grad()
            net(torch.tensor(indices)).pow(2).sum().backward()
            o.step()
    torch.testing.assert_close(emb.weight, ref.weight, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_complex_params_match_torch_sgd(backend, dtype):
    torch.manual_seed(0)
    ours = [torch.randn(3, 5, dtype=dtype, requires_grad=True), torch.randn(17, dtype=dtype, requires_grad=True)]
    theirs = [_leaf(p.detach().clone()) for p in ours]
    grads = [[torch.randn(p.shape, dtype=dtype) for p in ours] for _ in range(3)]
    opt = FusedSGDW(ours, backend=backend, dampening=0.1, **HYPER)
    ref = torch.optim.SGD(theirs, foreach=False, dampening=0.1, **HYPER)
    _steps([opt, ref], [ours, theirs], [[lambda p, g=g: g.clone() for g in step] for step in grads])
    assert_params_close(ours, theirs, **FP32_TOL)
    assert opt.state[ours[0]]["momentum_buffer"].dtype == dtype


def test_torch_sgd_keyword_arguments_are_accepted():
    p = torch.zeros(3, requires_grad=True)
    opt = FusedSGDW([p], lr=0.1, foreach=True, fused=True, differentiable=False)
    group = opt.param_groups[0]
    assert (group["foreach"], group["fused"], group["differentiable"]) == (True, True, False)


# --- DTensor parameters and param groups over devices -----------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


@pytest.mark.parametrize("placement", ["shard0", "replicate"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dtensor_params_update_local_shards_like_torch_sgd(mesh, backend, placement):
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    placements = [Shard(0)] if placement == "shard0" else [Replicate()]
    torch.manual_seed(0)
    full = [torch.randn(9, 4), torch.randn(5)]
    ours = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, placements)) for t in full]
    theirs = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, placements)) for t in full]
    grads = [[torch.randn(t.shape) for t in full] for _ in range(3)]
    opt = FusedSGDW(ours, backend=backend, **HYPER)
    ref = torch.optim.SGD(theirs, foreach=False, **HYPER)
    make = [[lambda p, g=g: distribute_tensor(g, mesh, placements) for g in step] for step in grads]
    _steps([opt, ref], [ours, theirs], make)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p.full_tensor(), q.full_tensor(), **FP32_TOL)
        assert isinstance(opt.state[p]["momentum_buffer"], DTensor)  # kept a DTensor, as torch does


def test_dtensor_grad_with_other_placements_is_an_error_before_any_launch(mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    a = torch.nn.Parameter(distribute_tensor(torch.zeros(4), mesh, [Shard(0)]))
    b = torch.nn.Parameter(distribute_tensor(torch.zeros(4), mesh, [Shard(0)]))
    a.grad = distribute_tensor(torch.ones(4), mesh, [Shard(0)])
    b.grad = distribute_tensor(torch.ones(4), mesh, [Replicate()])
    opt = FusedSGDW([a, b], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="same mesh and placements"):
        opt.step()
    assert torch.equal(a.to_local(), torch.zeros(4))  # nothing launched
    assert not opt.state[a]  # and no unwritten buffer left for the next step to read


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton does not run here")
def test_triton_op_refuses_a_tensor_without_its_own_address(mesh):
    """A DTensor handed to the kernel directly (data_ptr() 0) is an error, not a segfault."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from fasttrick.ops.triton_sgdw import sgdw_triton_

    p = distribute_tensor(torch.zeros(8), mesh, [Shard(0)])
    with pytest.raises(ValueError, match="no address of its own"):
        sgdw_triton_(
            [p], [p.clone()], [], lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False, decoupled_weight_decay=False, first_step=True,
        )  # fmt: skip


def test_one_group_over_two_devices_is_grouped_per_device():
    """torch.optim.SGD takes model.parameters() of a model split over devices; so does FusedSGDW."""
    cpu = torch.zeros(5, requires_grad=True)
    meta = torch.zeros(5, device="meta", requires_grad=True)
    opt = FusedSGDW([cpu, meta], **HYPER)
    cpu.grad, meta.grad = torch.ones(5), torch.ones(5, device="meta")
    opt.step()
    torch.testing.assert_close(cpu.detach(), torch.full((5,), -0.1))
    assert opt.state[meta]["momentum_buffer"].device.type == "meta"
