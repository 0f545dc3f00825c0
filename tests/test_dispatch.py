"""Backend resolution: a tiny test launch per device decides what can run, `auto` moves on past a backend
whose launch fails and warns once per (device, cause), an explicit backend raises with the cause."""

from __future__ import annotations

import warnings

import pytest
import torch

from fasttrick import BackendFallbackWarning, BackendUnavailableError, FusedSGDW
from fasttrick.environment import environment_report
from fasttrick.ops import dispatch
from fasttrick.ops.foreach import sgdw_foreach_
from fasttrick.ops.reference import sgdw_reference_
from fasttrick.optim import functional

NO_KERNEL_IMAGE = "CUDA error: no kernel image is available for execution on the device"
CPU = torch.device("cpu")


@pytest.fixture
def fresh_probes(monkeypatch):
    """Probes and warnings as in a new process, and again after the test (its fakes must not stay cached)."""

    def clear():
        dispatch._resolve.cache_clear()
        dispatch._launch_error.cache_clear()
        functional._RESOLVED.clear()  # the optimizer's resolved functions, kept for compiled steps

    clear()
    monkeypatch.setattr(dispatch, "_WARNED", set())
    yield
    clear()


def _failing_launch(monkeypatch, failing: dict[str, Exception]):
    """The test launch of each backend named in `failing` raises that error; the others launch for real."""
    functions = {name: dispatch._backend_function(name) for name in failing}
    real = dispatch._probe_launch

    def launch(update, device):
        for name, error in failing.items():
            if update is functions[name]:
                raise error
        real(update, device)

    monkeypatch.setattr(dispatch, "_probe_launch", launch)


def _fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BackendFallbackWarning)]


def test_real_cpu_probes_pass(fresh_probes):
    """The C++ kernel, foreach, reference, and Triton under its interpreter (tests/conftest.py) all launch here."""
    for name in ("cpu", "foreach", "reference", "triton"):
        if dispatch._why_unavailable(name, "cpu") is None:
            assert dispatch._launch_error(name, CPU) is None, name
    assert dispatch.auto_choice("cpu") == ("cpu", [])


def test_auto_moves_on_and_warns_once_per_device_and_cause(fresh_probes, monkeypatch):
    _failing_launch(monkeypatch, {"cpu": RuntimeError(NO_KERNEL_IMAGE)})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        name, update = dispatch.resolve_backend("auto", CPU)
        assert dispatch.resolve_backend("auto", "cpu") == (name, update)  # a device type: the same device
        dispatch._resolve.cache_clear()
        dispatch.resolve_backend("auto", CPU)  # resolved again: the warning is not repeated
    assert (name, update) == ("foreach", sgdw_foreach_)
    [message] = _fallback_warnings(record)
    assert "on cpu runs the slower 'foreach' backend" in message
    assert "'cpu' is unavailable" in message and NO_KERNEL_IMAGE in message  # the cause
    assert "Fix: build the C++ kernel" in message  # and the fix


def test_auto_warns_for_each_cause_and_falls_back_to_the_reference(fresh_probes, monkeypatch):
    _failing_launch(monkeypatch, {"cpu": RuntimeError("kernel A broke"), "foreach": RuntimeError("foreach B broke")})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert dispatch.resolve_backend("auto", CPU) == ("reference", sgdw_reference_)
    messages = _fallback_warnings(record)
    assert len(messages) == 2
    assert "kernel A broke" in messages[0] and "foreach B broke" in messages[1]


def test_auto_raises_when_nothing_runs(fresh_probes, monkeypatch):
    _failing_launch(monkeypatch, {name: RuntimeError(f"{name} broke") for name in ("cpu", "foreach", "reference")})
    with pytest.raises(BackendUnavailableError, match=r"no FusedSGDW backend runs on cpu: cpu: .*cpu broke"):
        dispatch.resolve_backend("auto", CPU)


def test_explicit_backend_whose_launch_fails_raises_with_the_cause(fresh_probes, monkeypatch):
    _failing_launch(monkeypatch, {"cpu": RuntimeError(NO_KERNEL_IMAGE)})
    with pytest.raises(
        BackendUnavailableError, match="'cpu' is unavailable on cpu: a test launch on cpu failed"
    ) as info:
        FusedSGDW([torch.zeros(3, requires_grad=True)], backend="cpu")
    assert NO_KERNEL_IMAGE in str(info.value) and "Fix:" in str(info.value)


def test_a_launch_that_computes_wrong_values_fails_the_probe(fresh_probes, monkeypatch):
    monkeypatch.setattr(
        dispatch, "_backend_function", lambda name: lambda *args, **hyper: None
    )  # runs, updates nothing
    cause = dispatch._launch_error("foreach", CPU)
    assert cause is not None and "wrong result" in cause


def test_optimizer_with_auto_falls_back_warns_once_and_matches_the_reference(fresh_probes, monkeypatch):
    _failing_launch(monkeypatch, {"cpu": RuntimeError(NO_KERNEL_IMAGE)})
    params = [torch.randn(5, requires_grad=True) for _ in range(2)]
    expected = [p.detach().clone().requires_grad_() for p in params]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt = FusedSGDW(params, lr=0.1, momentum=0.9)
        ref = FusedSGDW(expected, lr=0.1, momentum=0.9, backend="reference")
        for _ in range(2):
            for p, e in zip(params, expected, strict=True):
                p.grad = e.grad = torch.ones(5)
            opt.step()
            ref.step()
        FusedSGDW([torch.zeros(1, requires_grad=True)], lr=0.1)  # a second optimizer: no second warning
    assert len(_fallback_warnings(record)) == 1
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p, e)


def test_a_bare_cuda_means_the_current_cuda_device(monkeypatch):
    """Probes are per device: "cuda" resolves to the current device's index (cuda:0 and cuda:1 may differ)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert dispatch._concrete("cuda") == torch.device("cuda", 1)
    assert dispatch._concrete(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert dispatch._concrete("cpu") == CPU


def test_env_report_shows_the_choice_and_the_cause(fresh_probes, monkeypatch):
    _failing_launch(monkeypatch, {"cpu": RuntimeError(NO_KERNEL_IMAGE)})
    backends = environment_report()["backends cpu"]
    assert backends["auto"] == "foreach"
    assert backends["foreach"] == "ok"
    assert NO_KERNEL_IMAGE in backends["cpu"] and "Fix:" in backends["cpu"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_gpu_here_runs_a_compiled_backend():
    """The real probes on each GPU: the CUDA extension (built for this architecture) or at least Triton."""
    for index in range(torch.cuda.device_count()):
        chosen, skipped = dispatch.auto_choice(torch.device("cuda", index))
        assert chosen in ("cuda", "triton"), skipped
