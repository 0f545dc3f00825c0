"""PEP 517 build backend: setuptools' own, building fasttrick's kernels against the torch that will run them.

Under build isolation pip installs the build requirements into a fresh environment; a `torch` requirement
there pulls the newest torch (several GB with its CUDA wheels), and the kernels would be compiled against a
torch other than the one installed beside fasttrick, whose C++ ABI they must match. Instead this backend
asks the interpreter that pip installs into (the same executable, with its own sys.path: `-I` drops the
build environment's PYTHONPATH) where its torch lives and appends those folders to sys.path for the build,
after the build environment's own (so setuptools, wheel and ninja still come from there). No torch is
installed for the build, and the kernels match the installed one by construction.

Where no torch is installed yet (a fresh environment: `pip install .` brings torch as a dependency), the
build asks for one (`torch>=2.11`, the runtime floor); the kernels record the torch they were built
against, and fasttrick refuses to load them under another one (fasttrick/_backend.py says how to rebuild).
"""

from __future__ import annotations

import json
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the hooks this module does not change)

TORCH_FLOOR = "torch>=2.11"  # pyproject's runtime requirement
_PROBE = (
    "import importlib.util, json, sys\n"
    "spec = importlib.util.find_spec('torch')\n"
    "print(json.dumps({'torch': spec is not None, 'path': [p for p in sys.path if p]}))\n"
)


def _target() -> dict:
    """The target environment's sys.path, and whether torch is importable from it."""
    out = subprocess.run([sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"torch": False, "path": []}
    return json.loads(out.stdout.splitlines()[-1])


def _torch_importable() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _use_installed_torch() -> None:
    """Makes the target environment's torch importable by setup.py, after the build environment's packages."""
    if _torch_importable():  # --no-build-isolation, or torch already in the build environment
        return
    target = _target()
    if target["torch"]:
        sys.path.extend(p for p in target["path"] if p not in sys.path)


def _requires(hook, config_settings) -> list[str]:
    _use_installed_torch()  # setup.py runs in this hook too: it must see the same torch as the build
    requires = list(hook(config_settings))
    if not _torch_importable():
        requires.append(TORCH_FLOOR)
    return requires


def get_requires_for_build_wheel(config_settings=None):
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings=None):
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _use_installed_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _use_installed_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _use_installed_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _use_installed_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
