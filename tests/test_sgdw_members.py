"""FusedSGDW with members: K models stacked along dim 0, each with its own lr, momentum, dampening and
weight decay, updated in one launch. The oracle is K separate FusedSGDW steps on the members' slices,
each with that member's floats, on the same backend: bit for bit on cpu, reference and Triton (under
its interpreter here), to rounding on foreach (see ops/foreach.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fasttrick import FusedSGDW, available_backends

K = 3
# A contiguous matrix, a vector, a channels-last conv weight, an empty tensor, and a transposed matrix:
# the kernels walk members of the first four in place; the transposed one (dim 0 not outermost) takes
# the per-tensor path, in the members step and in the separate steps alike.
SHAPES = [(6, 5), (21,), (9, 4, 3, 3), (0, 2), (6, 4)]
CHANNELS_LAST, TRANSPOSED = 2, 4
EXACT_BACKENDS = [b for b in ("reference", "cpu", "triton") if b in available_backends("cpu")]
DTYPES = [torch.float32, torch.bfloat16, torch.float64]

# Per-member values: weight decay 0, momentum 0 and dampening among them.
MIXED = dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], dampening=[0.0, 0.1, 0.3], weight_decay=[0.0, 1e-2, 5e-4])
CONFIGS = {
    "mixed": dict(MIXED),
    "mixed_maximize": dict(MIXED, maximize=True),
    "mixed_decoupled": dict(MIXED, decoupled_weight_decay=True, weight_decay=[0.0, 0.1, 0.05]),
    "nesterov": dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.8, 0.5], weight_decay=[0.0, 1e-2, 5e-4], nesterov=True),
    "no_momentum": dict(lr=[0.1, 0.05, 0.2], momentum=0.0, weight_decay=[1e-3, 0.0, 1e-2]),
    "shared_floats": dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4),
}
PER_MEMBER = ("lr", "momentum", "dampening", "weight_decay")


def _member_config(config: dict, k: int) -> dict:
    """Member k's own FusedSGDW arguments: its floats, and the group-wide flags."""
    return {key: value[k] if key in PER_MEMBER and isinstance(value, list) else value for key, value in config.items()}


def _stacked_params(dtype, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    params[CHANNELS_LAST] = params[CHANNELS_LAST].contiguous(memory_format=torch.channels_last)
    params[TRANSPOSED] = params[TRANSPOSED].t().contiguous().t()  # shape (6, 4), dim 0 innermost
    return [p.requires_grad_() for p in params]


def _member(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.detach().unflatten(0, (K, -1))[k]


def _member_params(stacked: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Member k's slices as params of their own, laid out as in the stack (clone keeps a dense layout)."""
    return [_member(p, k).clone().requires_grad_() for p in stacked]


def _grads(dtype, step, nan_member=None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    if nan_member is not None:
        for g in grads:
            if g.numel():
                _member(g, nan_member).view(-1)[0] = math.nan
    return grads


def _give_grads(params, grads, k=None) -> None:
    """Each param gets its grad (member k's slice of it when k is given), laid out like the param."""
    for p, g in zip(params, grads, strict=True):
        g = g if k is None else _member(g, k)
        p.grad = torch.empty_like(p).copy_(g)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bit_identical(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert torch.equal(_bits(actual), _bits(expected)), f"{what}: differs in {(actual != expected).sum()} elements"


def _separate_optimizer(params: list[torch.Tensor], backend: str, config: dict) -> FusedSGDW:
    """One member's own optimizer. The transposed param's members take the per-tensor path (the reference
    update) in the members step, so its slice does in the member's own steps too."""
    walked = [p for i, p in enumerate(params) if i != TRANSPOSED]
    groups = [{"params": walked}, {"params": [params[TRANSPOSED]], "backend": "reference"}]
    return FusedSGDW(groups, backend=backend, **config)


def _run_stacked_and_separate(backend, dtype, config, steps=4, nan_member=None, frozen=None):
    """(stacked params, their optimizer, each member's params, their optimizers) after `steps` steps of
    the same grads; `frozen`: (step, param index) without a grad in that step."""
    stacked = _stacked_params(dtype)
    separate = [_member_params(stacked, k) for k in range(K)]
    opt = FusedSGDW(stacked, members=K, backend=backend, **config)
    separate_opts = [_separate_optimizer(separate[k], backend, _member_config(config, k)) for k in range(K)]
    for step in range(steps):
        grads = _grads(dtype, step, nan_member)
        _give_grads(stacked, grads)
        for k in range(K):
            _give_grads(separate[k], grads, k)
        if frozen is not None and frozen[0] == step:
            stacked[frozen[1]].grad = None
            for k in range(K):
                separate[k][frozen[1]].grad = None
        opt.step()
        for k in range(K):
            if k != nan_member:
                separate_opts[k].step()
    return stacked, opt, separate, separate_opts


def _assert_members_match(stacked, opt, separate, separate_opts, members=range(K)):
    for k in members:
        momentum_on = "momentum_buffer" in separate_opts[k].state[separate[k][0]]
        for i, (p, q) in enumerate(zip(stacked, separate[k], strict=True)):
            assert_bit_identical(_member(p, k), q.detach(), f"member {k}, param {i} {tuple(p.shape)}")
            if momentum_on:
                buf = opt.state[p]["momentum_buffer"]
                expected = separate_opts[k].state[q]["momentum_buffer"]
                assert_bit_identical(_member(buf, k), expected, f"member {k}, buffer {i}")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_members_step_is_k_separate_steps_bit_for_bit(backend, dtype, config):
    # Param 1 is frozen (no grad) in step 2, so it restarts nothing and moves nowhere that step.
    _assert_members_match(*_run_stacked_and_separate(backend, dtype, CONFIGS[config], frozen=(2, 1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_foreach_members_match_separate_foreach_steps_to_rounding(dtype):
    """foreach runs members through the reference's member update: equal to it bit for bit, and to the
    foreach backend's own separate steps (fused multiply-adds) within rounding."""
    stacked, _, separate, _ = _run_stacked_and_separate("foreach", dtype, CONFIGS["mixed"])
    for k in range(K):
        for p, q in zip(stacked, separate[k], strict=True):
            torch.testing.assert_close(_member(p, k), q.detach())
    reference = _run_stacked_and_separate("reference", dtype, CONFIGS["mixed"])[0]
    for i, (p, r) in enumerate(zip(stacked, reference, strict=True)):
        assert_bit_identical(p, r, f"param {i}")


@pytest.mark.parametrize("backend", [*EXACT_BACKENDS, "foreach"])
def test_nan_grad_in_one_member_leaves_the_others_bit_identical(backend):
    stacked, opt, separate, separate_opts = _run_stacked_and_separate(
        backend, torch.float32, CONFIGS["mixed"], nan_member=1
    )
    if backend == "foreach":  # its separate steps round differently (see above): compare with the reference
        separate, separate_opts = _run_stacked_and_separate("reference", torch.float32, CONFIGS["mixed"])[2:]
    _assert_members_match(stacked, opt, separate, separate_opts, members=(0, 2))
    assert _member(stacked[0], 1).isnan().any()  # the NaN did reach its own member


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_amp_scaled_and_skipped_steps_with_members(backend):
    """As a GradScaler drives it: grads unscaled in the kernel (and written back) as in separate steps, and a
    step with found_inf changes nothing."""
    stacked, opt, separate, separate_opts = _run_stacked_and_separate(backend, torch.float32, CONFIGS["mixed"], steps=1)
    for found_inf in (0.0, 1.0):
        grads = [g * 4 for g in _grads(torch.float32, step=5)]
        before = [t.detach().clone() for t in stacked] + [opt.state[p]["momentum_buffer"].clone() for p in stacked]
        for o, params, k in [(opt, stacked, None)] + [(separate_opts[k], separate[k], k) for k in range(K)]:
            _give_grads(params, grads, k)
            o.grad_scale, o.found_inf = torch.tensor(4.0), torch.tensor(found_inf)
            o.step()
        if found_inf:
            after = list(stacked) + [opt.state[p]["momentum_buffer"] for p in stacked]
            for i, (b, a) in enumerate(zip(before, after, strict=True)):
                assert_bit_identical(a, b, f"tensor {i} after a skipped step")
        else:
            _assert_members_match(stacked, opt, separate, separate_opts)
            for k in range(K):
                for p, q in zip(stacked, separate[k], strict=True):
                    assert_bit_identical(_member(p.grad, k), q.grad, f"member {k}: unscaled grad")


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_member_with_momentum_0_ignores_whatever_its_buffer_holds(backend):
    """Momentum 0 is torch's momentum-free update, however the member's part of the buffer got its values
    (here NaN): the update does not read it, nor write it."""
    config = dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], weight_decay=1e-2)
    stacked, opt, separate, separate_opts = _run_stacked_and_separate(backend, torch.float32, config, steps=1)
    for p in stacked:
        _member(opt.state[p]["momentum_buffer"], 1).fill_(math.nan)
    grads = _grads(torch.float32, step=7)
    _give_grads(stacked, grads)
    opt.step()
    for k in range(K):
        _give_grads(separate[k], grads, k)
        separate_opts[k].step()
    _assert_members_match(stacked, opt, separate, separate_opts)
    for p in stacked:
        assert _member(opt.state[p]["momentum_buffer"], 1).isnan().all()


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_writing_the_table_between_steps_changes_the_next_step(backend):
    """Every way to write a member's values: set_member, an element of the group's [K] view, and numbers
    assigned to the key (written into the table at the step). The same values as floats of separate steps."""
    config = dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], weight_decay=[0.0, 1e-2, 5e-4])
    stacked, opt, separate, separate_opts = _run_stacked_and_separate(backend, torch.float32, config, steps=1)
    group = opt.param_groups[0]
    table = group["member_table"]
    writes = [
        lambda: opt.set_member(0, 2, lr=0.01, momentum=0.7, dampening=0.2, weight_decay=0.0),
        lambda: group["lr"].__setitem__(0, 0.3),
        lambda: group.__setitem__("momentum", [0.5, 0.0, 0.25]),
        lambda: group.__setitem__("weight_decay", 1e-3),
    ]
    for step, write in enumerate(writes, start=1):
        write()
        grads = _grads(torch.float32, step)
        _give_grads(stacked, grads)
        opt.step()
        for k in range(K):
            for key in PER_MEMBER:
                for separate_group in separate_opts[k].param_groups:
                    separate_group[key] = group[key][k].item()
            _give_grads(separate[k], grads, k)
            separate_opts[k].step()
        _assert_members_match(stacked, opt, separate, separate_opts)
    assert group["member_table"] is table and group["momentum"].data_ptr() == table[1].data_ptr()
    assert table[:, 2].tolist() == [0.01, 0.25, 0.2, 1e-3]


@pytest.mark.parametrize("backend", [*EXACT_BACKENDS, "foreach"])
def test_compiled_step_does_not_recompile_when_the_table_is_written(backend):
    """torch.compile(opt.step, fullgraph=True): one graph for the step that creates the buffers, one for
    every step after, whatever the members' values become; the same results as eager steps."""
    config = dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], weight_decay=[0.0, 1e-2, 5e-4])
    graphs = 0

    def counting_backend(gm, example_inputs):
        nonlocal graphs
        graphs += 1
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    results = []
    for compiled in (True, False):
        stacked = _stacked_params(torch.float32)
        opt = FusedSGDW(stacked, members=K, backend=backend, **config)
        torch._dynamo.reset()
        step = torch.compile(opt.step, backend=counting_backend, fullgraph=True) if compiled else opt.step
        for i in range(6):
            _give_grads(stacked, _grads(torch.float32, i))
            step()
            opt.set_member(0, i % K, lr=0.01 * (i + 1), momentum=0.1 * i)
            opt.param_groups[0]["weight_decay"][(i + 1) % K] = 1e-3 * i
        results.append(stacked)
    assert graphs == 2
    for i, (p, e) in enumerate(zip(*results, strict=True)):
        assert_bit_identical(p, e, f"param {i}")


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_state_dict_round_trip_keeps_the_table_working(backend):
    config = dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], weight_decay=[0.0, 1e-2, 5e-4])
    stacked, opt, _, _ = _run_stacked_and_separate(backend, torch.float32, config, steps=2)
    opt.set_member(0, 1, lr=0.07)
    saved = copy.deepcopy(opt.state_dict())
    group = saved["param_groups"][0]
    assert group["members"] == K and group["lr"] == [0.1, 0.07, 0.2] and "member_table" not in group

    restored_params = [p.detach().clone().requires_grad_() for p in stacked]
    restored = FusedSGDW(restored_params, members=K, backend=backend, lr=1.0, momentum=0.1)
    table = restored.param_groups[0]["member_table"]
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["member_table"] is table  # written in place: references stay valid
    assert restored.param_groups[0]["lr"].tolist() == [0.1, 0.07, 0.2]
    for opt_, params in ((opt, stacked), (restored, restored_params)):
        for step in range(2, 4):
            opt_.set_member(0, 2, lr=0.03 * step)  # through the restored views too
            _give_grads(params, _grads(torch.float32, step))
            opt_.step()
    for i, (p, q) in enumerate(zip(stacked, restored_params, strict=True)):
        assert_bit_identical(p, q, f"param {i}")


def test_deepcopy_keeps_the_views_on_the_copys_table():
    opt = FusedSGDW(_stacked_params(torch.float32), members=K, lr=[0.1, 0.2, 0.3])
    clone = copy.deepcopy(opt)
    group = clone.param_groups[0]
    group["lr"][0] = 5.0
    assert group["member_table"][0, 0].item() == 5.0
    assert opt.param_groups[0]["lr"][0].item() == pytest.approx(0.1)


def test_decoupled_members_save_under_their_own_key():
    """As for one member: torch.optim.SGD must not read decoupled rates as L2 (optim/checkpoint.py)."""
    opt = FusedSGDW(
        _stacked_params(torch.float32), members=K, weight_decay=[0.0, 0.1, 0.2], decoupled_weight_decay=True
    )
    group = opt.state_dict()["param_groups"][0]
    assert "weight_decay" not in group and group["decoupled_weight_decay"] == [0.0, 0.1, 0.2]
    restored = FusedSGDW(_stacked_params(torch.float32), members=K, decoupled_weight_decay=True)
    restored.load_state_dict(opt.state_dict())
    assert restored.param_groups[0]["weight_decay"].tolist() == [0.0, 0.1, 0.2]


def test_complex_params_take_members_as_real_views():
    gen = torch.Generator().manual_seed(0)
    stacked = [torch.randn(6, 2, dtype=torch.complex64, generator=gen).requires_grad_()]
    separate = [[_member(stacked[0], k).clone().requires_grad_()] for k in range(K)]
    config = dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], weight_decay=[0.0, 1e-2, 5e-4])
    opt = FusedSGDW(stacked, members=K, backend="cpu", **config)
    separate_opts = [FusedSGDW(separate[k], backend="cpu", **_member_config(config, k)) for k in range(K)]
    for _ in range(3):
        grad = torch.randn(6, 2, dtype=torch.complex64, generator=gen)
        stacked[0].grad = grad.clone()
        opt.step()
        for k in range(K):
            separate[k][0].grad = _member(grad, k).clone()
            separate_opts[k].step()
    for k in range(K):
        assert_bit_identical(_member(stacked[0], k), separate[k][0].detach(), f"member {k}")


# ---- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(members=0), ValueError, "members must be an int >= 1"),
        (dict(members=2.0), ValueError, "members must be an int >= 1"),
        (dict(members=True), ValueError, "members must be an int >= 1"),
        (dict(members=4), ValueError, r"shape \(6, 5\) cannot hold 4 members.*multiple of 4"),
        (dict(members=K, lr=[0.1, 0.2]), ValueError, "lr has 2 values for 3 members"),
        (dict(members=K, momentum=torch.zeros(4)), ValueError, "momentum for 3 members takes one value or 3"),
        (dict(members=K, lr=[0.1, -0.2, 0.3]), ValueError, r"Invalid learning rate: -0.2 \(member 1\)"),
        (dict(members=K, weight_decay=[0.0, 0.0, -1.0]), ValueError, r"Invalid weight_decay value: -1.0 \(member 2\)"),
        (dict(members=K, momentum=[0.9, 0.0, 0.9], nesterov=True), ValueError, r"Nesterov.*member 1: momentum 0.0"),
        (dict(members=K, lr=["fast", 0.1, 0.1]), TypeError, "lr must be a number, got str"),
        (dict(lr=[0.1, 0.2, 0.3]), TypeError, "a value per member takes members=K"),
    ],
)
def test_bad_members_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        FusedSGDW(_stacked_params(torch.float32)[:3], **kwargs)


def test_zero_dim_param_in_a_group_with_members_raises():
    with pytest.raises(ValueError, match=r"param 1 of shape \(\) cannot hold 3 members"):
        FusedSGDW([torch.zeros(3, requires_grad=True), torch.zeros((), requires_grad=True)], members=K)


def test_group_with_members_on_two_devices_raises():
    with pytest.raises(ValueError, match="holds params of one device"):
        FusedSGDW([torch.zeros(3), torch.zeros(3, device="meta")], members=K, backend="reference")


def test_set_member_checks_its_arguments():
    opt = FusedSGDW(
        [{"params": _stacked_params(torch.float32)[:3], "members": K, "nesterov": True, "momentum": 0.9},
         {"params": [torch.zeros(4, requires_grad=True)]}],
        lr=0.1,
    )  # fmt: skip
    with pytest.raises(IndexError, match="member 3 of a group of 3 members"):
        opt.set_member(0, 3, lr=0.1)
    with pytest.raises(IndexError, match="group 2 of 2"):
        opt.set_member(2, 0, lr=0.1)
    with pytest.raises(ValueError, match="group 1 has one member"):
        opt.set_member(1, 0, lr=0.1)
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1.0 \(member 2\)"):
        opt.set_member(0, 2, lr=-1.0)
    with pytest.raises(ValueError, match=r"Nesterov.*member 0: dampening 0.1"):
        opt.set_member(0, 0, dampening=0.1)
    assert opt.param_groups[0]["lr"].tolist() == [0.1] * K  # nothing written by a refused call


def test_bad_values_assigned_to_a_key_raise_at_the_step_before_anything_moves():
    params = _stacked_params(torch.float32)[:3]
    opt = FusedSGDW(params, members=K, lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in params]
    _give_grads(params, _grads(torch.float32, 0)[:3])
    opt.param_groups[0]["lr"] = [0.1, 0.2]
    with pytest.raises(ValueError, match="lr has 2 values for 3 members"):
        opt.step()
    opt.param_groups[0]["lr"] = torch.zeros(K, 1)
    with pytest.raises(ValueError, match=r"lr of a group of 3 members must be a floating point tensor of shape \(3,\)"):
        opt.step()
    assert all(torch.equal(b, p) for b, p in zip(before, params, strict=True))
    assert not opt.state  # no buffer left behind by the refused steps


def test_loading_a_state_dict_with_other_members_raises():
    opt = FusedSGDW(_stacked_params(torch.float32)[:3], members=K, lr=0.1)
    single = FusedSGDW(_stacked_params(torch.float32)[:3], lr=0.1)
    with pytest.raises(ValueError, match="param group 0 of the state_dict has 1 members, this optimizer's 3"):
        opt.load_state_dict(single.state_dict())


def test_docs_example_runs():
    """docs/fused_sgdw.md's members example: self-contained, and it checks a member against its own run."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "fused_sgdw.md").read_text()
    section = text[text.index("## Members") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/fused_sgdw.md (members example)", "exec"), {})
