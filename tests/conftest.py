"""Shared test setup. Runs on CPU-only machines; CUDA cases join in when a GPU is present.

Every session ends with a line counting the tests each optimizer kernel backend ran (the tests
parametrized over ``backend``): a backend whose launch probe breaks drops out of the parametrization
silently, and this line shows it. A backend named in FASTTRICK_REQUIRE_BACKENDS that passed no test while
others did fails the session."""

import os
from collections import Counter

import pytest
import torch

# Triton must pick its interpreter before it is first imported: without a GPU, its kernels then run
# on CPU tensors, so the same kernel code is tested here and in CI.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_backend_of_test: dict[str, str] = {}
_backend_outcomes: Counter[tuple[str, str]] = Counter()


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if isinstance(backend, str):
            _backend_of_test[item.nodeid] = backend


def pytest_runtest_logreport(report):
    backend = _backend_of_test.get(report.nodeid)
    if backend is not None and (report.when == "call" or report.outcome != "passed"):
        _backend_outcomes[(backend, report.outcome)] += 1


def _missing_required_backends() -> list[str]:
    """The required backends that passed no test, when backend-parametrized tests passed at all."""
    passed = {backend for (backend, outcome), n in _backend_outcomes.items() if outcome == "passed" and n}
    required = [b for b in os.environ.get("FASTTRICK_REQUIRE_BACKENDS", "").split(",") if b]
    return [b for b in required if b not in passed] if passed else []


def pytest_terminal_summary(terminalreporter):
    if not _backend_outcomes:
        return
    backends = sorted({backend for backend, _ in _backend_outcomes})
    counts = [
        f"{backend} "
        + " ".join(f"{n} {outcome}" for (b, outcome), n in sorted(_backend_outcomes.items()) if b == backend)
        for backend in backends
    ]
    terminalreporter.write_line(f"tests per optimizer backend: {'; '.join(counts)}")
    missing = _missing_required_backends()
    if missing:
        terminalreporter.write_line(
            f"FASTTRICK_REQUIRE_BACKENDS names {', '.join(missing)}, which passed no test: a kernel that did not "
            "load (python -m fasttrick.env says why) or tests deselected",
            red=True,
        )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and _missing_required_backends():
        session.exitstatus = 1
