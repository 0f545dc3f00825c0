"""Capability probes: what this process can run. Each probe runs once and keeps the original error,
so an explicitly requested backend can say why it is missing, and the study runner can say which extra
to install.

Ground floor: imports nothing else of the package, and never imports triton at import time.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ._toolkit import find_cuda_home

_CSRC = Path(__file__).resolve().parents[2] / "csrc"  # present in a source checkout (editable install)
_EXTENSIONS = {
    "cpu": ("fasttrick._C", ["sgdw_cpu.cpp"]),
    "cuda": ("fasttrick._C_cuda", ["sgdw_cuda.cu"]),
}


# The study runner's imports (module -> distribution), pyproject's `study` extra: `pip install fasttrick`
# alone installs the optimizer (torch, triton) and none of these.
STUDY_MODULES = {
    "numpy": "numpy",
    "PIL": "pillow",
    "pydantic": "pydantic",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "filelock": "filelock",
}


@dataclass(frozen=True)
class Probe:
    available: bool
    detail: str  # how it was found (version, prebuilt or JIT), or why not


def triton_interpret() -> bool:
    """Triton's interpreter runs kernels on CPU tensors; it must be chosen before triton is imported."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_probe() -> Probe:
    try:
        import triton
    except Exception as exc:  # ImportError, or a broken install raising at import
        return Probe(False, f"triton is not importable: {type(exc).__name__}: {exc}")
    mode = "interpreter (TRITON_INTERPRET=1)" if triton_interpret() else "compiled"
    return Probe(True, f"triton {triton.__version__}, {mode}")


@functools.cache
def extension_probe(kind: str) -> Probe:
    """Loads the prebuilt C++ ("cpu") or CUDA ("cuda") kernels; JIT-builds them with ninja if missing.

    FASTTRICK_JIT=0 turns the JIT fallback off (e.g. where a first-use build of a minute is unwanted);
    FASTTRICK_PREBUILT=0 skips the prebuilt module and JIT-builds csrc/ (kernel work without reinstalling).
    """
    module, sources = _EXTENSIONS[kind]
    if os.environ.get("FASTTRICK_PREBUILT", "1") == "0":
        prebuilt_error = f"{module} skipped (FASTTRICK_PREBUILT=0)"
    elif (refusal := _build_refusal(module)) is not None:
        prebuilt_error = refusal
    else:
        try:
            importlib.import_module(module)
            return Probe(True, f"{module} (prebuilt)")
        except ImportError as exc:
            prebuilt_error = f"{module} not built ({exc})"
    if kind == "cuda" and torch.version.cuda is None:
        return Probe(False, f"{prebuilt_error}; this torch is a CPU-only build")
    if os.environ.get("FASTTRICK_JIT", "1") == "0":
        return Probe(False, f"{prebuilt_error}; JIT build disabled by FASTTRICK_JIT=0")
    if not _CSRC.is_dir():
        return Probe(False, f"{prebuilt_error}; no csrc/ next to the package to JIT-build from")
    try:
        from torch.utils import cpp_extension

        if kind == "cuda" and not os.environ.get("CUDA_HOME") and (home := find_cuda_home()):
            # torch computed its guess when cpp_extension was imported; a wrapper nvcc makes it /usr/local
            os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = home
        cpp_extension.load(
            name=f"fasttrick_jit_{kind}",
            sources=[str(_CSRC / s) for s in sources],
            extra_cflags=["-O3", "-fopenmp"],  # -fopenmp: see setup.py
            extra_ldflags=["-fopenmp"],
            extra_cuda_cflags=["-O3"],
            is_python_module=False,
        )
    except Exception as exc:
        return Probe(False, f"{prebuilt_error}; JIT build failed: {type(exc).__name__}: {exc}")
    return Probe(True, "JIT-built with ninja (torch extensions cache)")


REBUILD = "pip install --force-reinstall --no-deps <fasttrick checkout or sdist>"


def _build_refusal(module: str) -> str | None:
    """Why the prebuilt `module` must not be loaded, from the record its build left beside it (setup.py):
    built against another torch (whose C++ ABI it need not match), or not built at all. None: load it.
    A module without a record (built by an older setup.py) is tried; a broken one fails its import."""
    record_file = Path(__file__).resolve().parent / f"{module.rpartition('.')[2]}.build.json"
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return None
    if record.get("error"):
        return f"{module} was not built at install: {record['error']}"
    if record.get("torch") != torch.__version__:
        return (
            f"{module} was built against torch {record.get('torch')}, but this is torch {torch.__version__}: "
            f"rebuild it with `{REBUILD}` (in a checkout: bash .ci/build-inplace.sh)"
        )
    return None


def study_extra_error() -> str | None:
    """None when the study runner's dependencies import, else which are missing and the command that adds them.

    Imports them (the CLI that asks is about to), so a package present but broken also counts as missing.
    """
    missing = []
    for module, distribution in STUDY_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if not missing:
        return None
    return (
        f"the study runner needs {', '.join(missing)}, which the optimizer alone does not install: "
        'pip install "fasttrick[study]" (from a checkout: pip install ".[study]")'
    )
