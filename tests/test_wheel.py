"""The package as a user installs it: a wheel built from the checkout with build isolation on (pip's default),
installed into a fresh venv that has torch, imported from outside the checkout. CUDA_HOME is unset, as on a
machine whose nvcc is on PATH without it; the kernels must be built against the venv's own torch.

Slow (a few minutes on 2 cores: torch into the venv, the C++ kernel, and the CUDA kernel where nvcc is found).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Build outputs and local state of a working checkout, which a fresh clone lacks.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".whl",
    ".data",
    ".dali",
    ".benchmarks",
    ".*_cache",
    "dist",
    "runs",
    "*.egg-info",
    "__pycache__",
    "*.so",
    "*.build.json",
)
BUILDS_CUDA = torch.version.cuda is not None and shutil.which("nvcc") is not None


def _run(args: list[str], cwd: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_HOME", "CUDA_PATH", "VIRTUAL_ENV")}
    out = subprocess.run(args, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"{args}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the venv's python, the wheel, a folder outside the checkout)."""
    if os.environ.get("FASTTRICK_SKIP_WHEEL_TEST") == "1":
        pytest.skip("FASTTRICK_SKIP_WHEEL_TEST=1: CI builds and installs the wheel once, in its development stage")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "fasttrick"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    # A kernel left in build/lib by an earlier build must not reach the wheel.
    stale = source / "build" / "lib.stale" / "fasttrick" / "_C_cuda.stale.so"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", f"torch=={importlib.metadata.version('torch')}"], tmp)
    # TORCH_CUDA_ARCH_LIST: one target keeps the CUDA build under a minute; the default list is setup.py's.
    build_env = {"MAX_JOBS": "2", "TORCH_CUDA_ARCH_LIST": "9.0"}
    log = _run(
        [str(python), "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "dist"), str(source)], tmp, **build_env
    )
    assert "Collecting setuptools" in log and "Collecting torch" not in log  # no second torch for the build
    (wheel,) = (tmp / "dist").glob("fasttrick-*.whl")
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[study]"], tmp)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return python, wheel, outside


@pytest.mark.slow
def test_the_wheel_holds_this_builds_kernels_and_the_studies(installed):
    _, wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    kernels = sorted(n for n in names if n.endswith(".so"))
    assert [k.split(".")[0] for k in kernels] == ["fasttrick/_C", *(["fasttrick/_C_cuda"] if BUILDS_CUDA else [])]
    assert not any("stale" in n for n in names)
    assert {f"fasttrick/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= set(names)
    record = json.loads(zipfile.ZipFile(wheel).read("fasttrick/_C.build.json"))
    assert record["torch"] == torch.__version__ and record["error"] is None  # the venv's torch, not a newer one


@pytest.mark.slow
def test_the_installed_package_works_from_outside_the_checkout(installed):
    python, _, outside = installed
    env_report = _run([str(python), "-m", "fasttrick.env"], outside)
    assert "fasttrick._C (prebuilt)" in env_report
    if BUILDS_CUDA:
        assert "fasttrick._C_cuda (prebuilt)" in env_report
    listing = _run([str(python), "-m", "fasttrick.train", "--list"], outside)
    assert "group1" in listing and "smoke" in listing
    dry = _run([str(python), "-m", "fasttrick.train", "--config", "group1", "--dry-run"], outside)
    assert "sgd" in dry
    _run([str(python), "-m", "fasttrick.train", "--config", "configs/smoke.yaml", "--dry-run"], outside)
    assert not (outside / "runs").exists()


@pytest.mark.slow
def test_a_kernel_built_against_another_torch_is_refused_and_auto_falls_back(installed):
    python, _, outside = installed
    check = (
        "import json, pathlib, warnings, torch, fasttrick\n"
        "record = pathlib.Path(fasttrick.__file__).parent / '_C.build.json'\n"
        "record.write_text(json.dumps({**json.loads(record.read_text()), 'torch': '2.0.0'}))\n"
        "from fasttrick import FusedSGDW, _backend\n"
        "print(_backend.extension_probe('cpu'))\n"
        "p = torch.ones(4, requires_grad=True)\n"
        "p.grad = torch.ones(4)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    FusedSGDW([p], lr=0.5).step()\n"
        "assert p.tolist() == [0.5] * 4, p\n"
        "print('WARNED', [str(w.message) for w in caught])\n"
    )
    out = _run([str(python), "-c", check], outside)
    assert "available=False" in out and "built against torch 2.0.0" in out and "--force-reinstall" in out
    assert "WARNED" in out and "built against torch 2.0.0" in out.split("WARNED", 1)[1]


FAKE_NVCC = """#!/bin/sh
if [ "$1" = --version ]; then echo "Cuda compilation tools, release {release}, V{release}.1"; exit 0; fi
echo "nvcc: this toolkit compiles nothing" >&2
exit 1
"""


def _other_major(cuda: str | None) -> str:
    return "11.8" if (cuda or "").startswith("12") else "12.8"


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU-only torch builds no CUDA kernel")
@pytest.mark.parametrize("release", [_other_major(torch.version.cuda), torch.version.cuda], ids=["mismatch", "fails"])
def test_a_cuda_kernel_that_cannot_be_built_is_skipped_with_one_warning(release, tmp_path):
    """A toolkit of another CUDA major version (torch refuses it before compiling), or one whose nvcc fails: the
    wheel is built without the CUDA kernel, one warning names the fix, and the record says why."""
    source = tmp_path / "fasttrick"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    (toolkit / "bin").mkdir()
    (toolkit / "bin" / "nvcc").write_text(FAKE_NVCC.format(release=release))
    (toolkit / "bin" / "nvcc").chmod(0o755)
    (tmp_path / "dist").mkdir()
    build = "import sys\nsys.path.insert(0, 'build_backend')\nimport fasttrick_build\nfasttrick_build.build_wheel(sys.argv[1])\n"
    env = {"CUDA_HOME": str(toolkit), "FASTTRICK_SKIP_CPU_EXT": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}
    log = _run([sys.executable, "-c", build, str(tmp_path / "dist")], source, **env)
    assert log.count("WARNING fasttrick") == 1 and "FASTTRICK_SKIP_CUDA_EXT=1" in log, log[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fasttrick-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(name.endswith(".so") for name in names)
    record = json.loads(zipfile.ZipFile(wheel).read("fasttrick/_C_cuda.build.json"))
    assert "could not be built" in record["error"] and record["torch"] == torch.__version__


def test_the_toolkit_of_a_wrapper_nvcc_is_found_without_cuda_home(tmp_path, monkeypatch):
    """A wrapper script on PATH (as /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc): torch would guess
    the wrapper's parent; the toolkit is the one nvcc --dryrun names."""
    from fasttrick._toolkit import find_cuda_home

    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    (toolkit / "bin").mkdir()
    (toolkit / "bin" / "nvcc").write_text(f'#!/bin/sh\necho "#$ TOP={toolkit}/bin/.."\n')
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    for script in (wrapper, toolkit / "bin" / "nvcc"):
        script.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_cuda_home() == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    assert find_cuda_home() == "/opt/my-cuda"
