"""FusedResNet18: K ResNet-18s as one network must compute, member by member, what K separate ResNet18s compute
(logits, losses, gradients, BatchNorm statistics, eval outputs), in fp64 to ~1e-10; members must not leak into
each other (a NaN member leaves the others bit-identical); checkpoints convert to and from plain ResNet18s;
channels_last, bf16 autocast and torch.compile work, with a compiled graph whose size does not depend on K."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fasttrick.engine.session import reinitialize
from fasttrick.models import FusedResNet18, ResNet18, member_cross_entropy

K = 3
WIDTH = 1 / 16  # 4/8/16/32 channels: the whole fp64 comparison runs in a second
BATCH = 6
SIZE = 16  # 16x16 images: stage 4 still sees 2x2 maps (BatchNorm over 24 values), at a quarter of 32x32's cost
TOL = 1e-10
# channels_last runs at 8/16/32/64 channels: at 4 channels, torch 2.14.1's CPU backward of a channels_last
# ResNet18 corrupts the heap on one thread (aborts seen at exit, the plain model alike).
CHANNELS_LAST_WIDTH = 1 / 8


def _batch(seed: int, dtype=torch.float64, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=gen, dtype=dtype), torch.randint(0, 10, (batch,), generator=gen)


def _separate_models(dtype=torch.float64, members: int = K) -> list[ResNet18]:
    """Member k: a ResNet18 initialised from seed 100 + k, with non-trivial BatchNorm affine parameters and
    running statistics (fresh ones are all 1 / 0, which would hide a swapped or shared slice)."""
    models = []
    for k in range(members):
        torch.manual_seed(100 + k)
        model = ResNet18(width=WIDTH).to(dtype)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name.endswith("weight") and tensor.dim() == 1:  # BatchNorm
                    tensor.uniform_(0.5, 1.5)
                elif name.endswith(("running_mean", "bias")):
                    tensor.normal_(0, 0.1)
                elif name.endswith("running_var"):
                    tensor.uniform_(0.5, 2.0)
        models.append(model)
    return models


def _fused_from(models: list[ResNet18], dtype=torch.float64, kernels: str = "grouped") -> FusedResNet18:
    fused = FusedResNet18(members=len(models), width=WIDTH, kernels=kernels).to(dtype)
    for k, model in enumerate(models):
        fused.load_member(k, model.state_dict())
    return fused


def _member_grad(param: torch.Tensor, members: int, k: int) -> torch.Tensor:
    return param.grad.unflatten(0, (members, -1))[k]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = TOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


# -- layout contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_parameters_match_plain_resnet18_one_to_one_and_member_views_are_views(memory_format):
    fused = FusedResNet18(members=4, width=WIDTH).to(memory_format=memory_format)
    plain = ResNet18(width=WIDTH)
    fused_params, plain_params = list(fused.parameters()), list(plain.parameters())
    assert len(fused_params) == len(plain_params) == 62
    assert list(fused.state_dict()) == list(plain.state_dict())
    for k in range(4):
        views = fused.member_views(k)
        assert [v.shape for v in views] == [p.shape for p in plain_params]
        for view, fused_param, plain_param in zip(views, fused_params, plain_params, strict=True):
            assert fused_param.shape[0] == 4 * plain_param.shape[0]
            assert view.is_leaf and not view.requires_grad
            assert view.untyped_storage().data_ptr() == fused_param.untyped_storage().data_ptr()
            expected = fused_param.detach().unflatten(0, (4, -1))[k].reshape(view.shape)
            assert view.data_ptr() == expected.data_ptr() and view.stride() == expected.stride()
    # A write through member 2's views reaches the fused parameters, and only member 2's slices.
    before = [p.detach().clone() for p in fused_params]
    for view in fused.member_views(2):
        view.fill_(7.0)
    for param, old in zip(fused_params, before, strict=True):
        slices, old_slices = param.detach().unflatten(0, (4, -1)), old.unflatten(0, (4, -1))
        assert torch.all(slices[2] == 7.0)
        for k in (0, 1, 3):
            assert torch.equal(slices[k], old_slices[k])


def test_every_buffer_splits_per_member_including_num_batches_tracked():
    fused = FusedResNet18(members=K, width=WIDTH).double()
    for name, buffer in fused.named_buffers():
        assert buffer.shape[0] % K == 0, name
    fused.train()
    for step in range(2):
        fused(_batch(step)[0])
    counters = [b for n, b in fused.named_buffers() if n.endswith("num_batches_tracked")]
    assert len(counters) == 20 and all(torch.equal(c, torch.full((K,), 2)) for c in counters)
    state = fused.member_state_dict(1)
    assert state["stem.1.num_batches_tracked"].shape == () and state["stem.1.num_batches_tracked"].item() == 2


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="members must be a positive int"):
        FusedResNet18(members=0)
    with pytest.raises(ValueError, match="width must be > 0"):
        FusedResNet18(members=2, width=0)
    fused = FusedResNet18(members=2, width=WIDTH)
    with pytest.raises(IndexError, match=r"member must be an int in \[0, 2\), got 2"):
        fused.member_views(2)
    with pytest.raises(IndexError, match="got -1"):
        fused.member_state_dict(-1)
    with pytest.raises(ValueError, match=r"expected logits \[N, K, classes\] and targets \[N\]"):
        member_cross_entropy(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))


# -- numerics against separate models ------------------------------------------------------------


def test_member_cross_entropy_is_each_members_mean_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, K, 10, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 10, (5,), generator=gen)
    losses = member_cross_entropy(logits, targets)
    assert losses.shape == (K,)
    for k in range(K):
        _assert_close(losses[k], F.cross_entropy(logits[:, k], targets), f"member {k} loss")
    for reduction in ("mean", "sum"):
        per_member = member_cross_entropy(logits, targets, per_member=True, reduction=reduction, label_smoothing=0.1)
        for k in range(K):
            expected = F.cross_entropy(logits[:, k], targets, reduction=reduction, label_smoothing=0.1)
            assert torch.equal(per_member[k], expected), f"member {k} {reduction}"


@pytest.mark.parametrize("kernels", ["grouped", "per_member"])
def test_fp64_training_matches_separate_models(kernels):
    """Three train-mode steps (forward, sum of member losses, backward, SGD with momentum) on different batches:
    logits, losses, gradients and the updated weights after each step, then BatchNorm running statistics and
    eval-mode outputs, all member by member against the separate models: to ~1e-10 with grouped kernels,
    bit-identical with per_member kernels (the separate models' own kernels and loss calls)."""
    models = _separate_models()
    fused = _fused_from(models, kernels=kernels)
    per_member = kernels == "per_member"
    tol = 0.0 if per_member else TOL
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
    fused_opt = torch.optim.SGD(fused.parameters(), **hyper)
    separate_opts = [torch.optim.SGD(m.parameters(), **hyper) for m in models]
    fused.train()
    for m in models:
        m.train()
    for step in range(3):
        images, labels = _batch(step)
        logits = fused(images)
        assert logits.shape == (BATCH, K, 10)
        losses = member_cross_entropy(logits, labels, per_member=per_member)
        fused_opt.zero_grad()
        losses.sum().backward()
        for k, (model, opt) in enumerate(zip(models, separate_opts, strict=True)):
            separate_logits = model(images)
            _assert_close(logits[:, k], separate_logits, f"step {step} member {k} logits", tol)
            loss = F.cross_entropy(separate_logits, labels)
            _assert_close(losses[k], loss, f"step {step} member {k} loss", tol)
            opt.zero_grad()
            loss.backward()
            for (name, fused_param), param in zip(fused.named_parameters(), model.parameters(), strict=True):
                grad = _member_grad(fused_param, K, k).reshape(param.shape)
                _assert_close(grad, param.grad, f"step {step} member {k} grad of {name}", tol)
        fused_opt.step()
        for opt in separate_opts:
            opt.step()
    for k, model in enumerate(models):
        member_state = fused.member_state_dict(k)
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                assert torch.equal(member_state[name], tensor), name
            else:
                _assert_close(member_state[name], tensor, f"member {k} {name} after 3 steps", tol)
    fused.eval()
    images, _ = _batch(10)
    with torch.no_grad():
        eval_logits = fused(images)
        for k, model in enumerate(models):
            _assert_close(eval_logits[:, k], model.eval()(images), f"member {k} eval logits", tol)


# -- checkpoints ---------------------------------------------------------------------------------


def test_member_checkpoint_round_trips_through_a_plain_resnet18():
    models = _separate_models()
    fused = _fused_from(models)
    fused.train()
    fused(_batch(0)[0])  # running statistics and counters move away from the loaded ones
    images, _ = _batch(1)
    fused.eval()
    with torch.no_grad():
        fused_logits = fused(images)
    for k in range(K):
        state = fused.member_state_dict(k)
        plain = ResNet18(width=WIDTH).double()
        plain.load_state_dict(state)  # strict: same keys and shapes
        assert all(state[n].dtype == t.dtype for n, t in plain.state_dict().items())
        with torch.no_grad():
            _assert_close(plain.eval()(images), fused_logits[:, k], f"member {k} as a ResNet18")
        # Detached copies: changing the dict does not change the model.
        state["head.bias"].add_(1.0)
        assert not torch.equal(fused.member_state_dict(k)["head.bias"], state["head.bias"])


def test_loading_a_member_changes_no_other_member_and_reads_back_exactly():
    fused = _fused_from(_separate_models())
    before = {name: t.clone() for name, t in fused.state_dict().items()}
    torch.manual_seed(7)
    newcomer = ResNet18(width=WIDTH).double()
    newcomer.state_dict()["stem.1.num_batches_tracked"].fill_(5)
    fused.load_member(1, newcomer.state_dict())
    after = fused.state_dict()
    for name, old in before.items():
        old_slices, new_slices = old.unflatten(0, (K, -1)), after[name].unflatten(0, (K, -1))
        assert torch.equal(new_slices[0], old_slices[0]) and torch.equal(new_slices[2], old_slices[2]), name
    for name, tensor in fused.member_state_dict(1).items():
        assert torch.equal(tensor, newcomer.state_dict()[name]), name
        assert tensor.dtype == newcomer.state_dict()[name].dtype


def test_load_member_rejects_bad_state_dicts_naming_what_is_wrong():
    fused = FusedResNet18(members=2, width=WIDTH)
    good = ResNet18(width=WIDTH).state_dict()
    before = {name: t.clone() for name, t in fused.state_dict().items()}

    missing = {n: t for n, t in good.items() if n != "stages.3.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing keys \['stages.3.bn2.running_var'\]"):
        fused.load_member(0, missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        fused.load_member(0, {**good, "extra.weight": torch.zeros(1)})
    wider = ResNet18(width=2 * WIDTH).state_dict()
    with pytest.raises(ValueError, match=r"wrong shapes \[stem.0.weight: \(8, 3, 3, 3\), expected \(4, 3, 3, 3\)"):
        fused.load_member(1, wider)
    with pytest.raises(ValueError, match=r"head.weight: \(100, 32\), expected \(10, 32\)"):
        fused.load_member(1, ResNet18(num_classes=100, width=WIDTH).state_dict())
    with pytest.raises(IndexError, match="member must be an int"):
        fused.load_member(2, good)
    # A rejected dict writes nothing.
    assert all(torch.equal(t, before[n]) for n, t in fused.state_dict().items())


# -- isolation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", ["grouped", "per_member"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_nan_member_leaves_the_others_bit_identical(memory_format, kernels):
    def outputs_and_grads(poison: bool):
        torch.manual_seed(0)
        width = CHANNELS_LAST_WIDTH if memory_format == torch.channels_last else WIDTH
        fused = FusedResNet18(members=K, width=width, kernels=kernels).to(memory_format=memory_format)
        if poison:
            with torch.no_grad():
                views = fused.member_views(1)
                views[10].fill_(float("nan"))  # a conv weight in the middle of stage 2
                views[-1][3] = float("nan")  # one head bias
        images, labels = _batch(0, dtype=torch.float32)
        logits = fused(images.contiguous(memory_format=memory_format))
        member_cross_entropy(logits, labels).sum().backward()
        grads = [p.grad.unflatten(0, (K, -1)) for p in fused.parameters()]
        stats = [b.unflatten(0, (K, -1)) for n, b in fused.named_buffers() if "running" in n]
        return logits.detach(), grads, stats

    clean_logits, clean_grads, clean_stats = outputs_and_grads(poison=False)
    logits, grads, stats = outputs_and_grads(poison=True)
    assert torch.isnan(logits[:, 1]).all()
    for k in (0, 2):
        assert torch.equal(logits[:, k], clean_logits[:, k])
        for i, (grad, clean) in enumerate(zip(grads, clean_grads, strict=True)):
            assert torch.equal(grad[k], clean[k]), f"member {k} grad {i}"
        for stat, clean in zip(stats, clean_stats, strict=True):
            assert torch.equal(stat[k], clean[k])


# -- initialisation ------------------------------------------------------------------------------


def test_engine_reinitialize_draws_every_member_from_the_plain_distributions():
    fused = FusedResNet18(members=4, width=WIDTH)
    with torch.no_grad():
        for tensor in fused.state_dict().values():
            tensor.fill_(3)
    reinitialize(fused, seed=0)
    plain = ResNet18(width=WIDTH)
    reinitialize(plain, seed=0)
    for (name, fused_tensor), plain_tensor in zip(fused.state_dict().items(), plain.state_dict().values(), strict=True):
        slices = fused_tensor.unflatten(0, (4, -1))
        if name.endswith("weight") and plain_tensor.dim() > 1:
            # kaiming-uniform bound 1/sqrt(fan_in): the plain layer's fan-in, not K times it
            bound = 1 / plain_tensor[0].numel() ** 0.5
            assert slices.abs().max() <= bound and slices[0].abs().max() > bound / 2, name
            assert not torch.equal(slices[0], slices[1]), name
        else:
            # BatchNorm: weight 1, bias 0, running stats 0 / 1, counters 0; head bias within its bound
            if name == "head.bias":
                assert slices.abs().max() <= 1 / plain.head.in_features**0.5
            else:
                assert all(torch.equal(s.reshape(plain_tensor.shape), plain_tensor) for s in slices), name


# -- channels_last, bf16 autocast, torch.compile -------------------------------------------------


@pytest.mark.parametrize("kernels", ["grouped", "per_member"])
def test_channels_last_bf16_autocast_trains_close_to_fp32(kernels):
    models = _separate_models(dtype=torch.float32, members=2)
    fused = _fused_from(models, dtype=torch.float32, kernels=kernels).to(memory_format=torch.channels_last)
    images, labels = _batch(0, dtype=torch.float32, batch=16)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fused(images)
        assert logits.dtype == torch.bfloat16
    loss = member_cross_entropy(logits.float(), labels).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())
    assert fused.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for k, model in enumerate(models):
            reference = model.train()(images)
            torch.testing.assert_close(logits[:, k].float(), reference, rtol=0.1, atol=0.1)


def _graph_sizes(members: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """FX node counts of the forward and backward graphs torch.compile traces (aot_autograd with counting
    compilers that then run the graphs as they are), and the compiled and eager logits."""
    from torch._dynamo.backends.common import aot_autograd

    sizes: list[int] = []

    def counting_compiler(gm: torch.fx.GraphModule, example_inputs):
        sizes.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    fused = FusedResNet18(members=members, width=WIDTH, kernels="grouped").to(memory_format=torch.channels_last)
    compiled = torch.compile(fused, backend=aot_autograd(fw_compiler=counting_compiler, bw_compiler=counting_compiler))
    images, labels = _batch(0, dtype=torch.float32)
    images = images.contiguous(memory_format=torch.channels_last)
    eager_logits = fused(images)
    logits = compiled(images)
    member_cross_entropy(logits, labels).sum().backward()
    return sizes, logits.detach(), eager_logits.detach()


@pytest.mark.slow
def test_compiled_graph_size_does_not_grow_with_members():
    sizes_2, logits_2, eager_2 = _graph_sizes(2)
    sizes_4, logits_4, eager_4 = _graph_sizes(4)
    assert len(sizes_2) == 2, f"expected one forward and one backward graph (no graph break), got {sizes_2}"
    assert sizes_2 == sizes_4, f"graph sizes (forward, backward) K=2 {sizes_2} != K=4 {sizes_4}"
    torch.testing.assert_close(logits_2, eager_2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_4, eager_4, rtol=1e-5, atol=1e-5)


# -- benchmarks/array_sweep.py on tiny settings --------------------------------------------------


def _array_sweep_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "array_sweep.py"
    spec = importlib.util.spec_from_file_location("array_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 8-30 s on the 2-core CPU, by its load
def test_array_sweep_runs_on_cpu_with_tiny_settings(tmp_path):
    """The script's CPU check: bf16 autocast as on a GPU, eager. (fp32 is left out on purpose: at width 1/16
    a plain ResNet-18's 1x1 stride-2 shortcut conv has 4 input channels, and oneDNN's channels_last weight
    gradient for it crashes or hangs on AVX2 CPUs, oneDNN issue 6035; the grouped convs of K >= 2 are not
    affected.)"""
    sweep = _array_sweep_module()
    out = tmp_path / "sweep.json"
    tiny = ["--width", "0.0625", "--batch", "8", "--members", "2,1", "--steps", "2", "--warmup", "1", "--no-compile"]
    assert sweep.main(["--out", str(out), *tiny]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["environment"]["torch"] == torch.__version__
    assert report["settings"]["members"] == [1, 2] and report["settings"]["compile"] is False
    rows = report["results"]
    assert [r["members"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows), rows
    for row in rows:
        assert row["timed_steps"] == 2 and row["images_per_s"] > 0
        assert row["images_per_s"] == pytest.approx(row["members"] * 8 * 2 / row["seconds"], rel=1e-2)
    assert rows[0]["speedup_vs_k1"] == 1.0
    assert rows[1]["speedup_vs_k1"] == pytest.approx(rows[1]["images_per_s"] / rows[0]["images_per_s"], rel=1e-2)
    assert rows[1]["parameters"] == 2 * rows[0]["parameters"]

    # Past its time limit, the sweep records every K as skipped and still writes its JSON.
    assert sweep.main(["--out", str(out), *tiny, "--time-limit", "1e-6"]) == 0
    assert [r["status"] for r in json.loads(out.read_text())["results"]] == [
        "skipped: the sweep's time limit had passed"
    ] * 2
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", str(out), "--members", "0,4"])
