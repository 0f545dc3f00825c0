"""A light install: `pip install fasttrick` is the optimizer (torch, triton); the study runner's
dependencies are the `study` extra, which the optimizer never imports and the CLI asks for by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fasttrick
from fasttrick import _backend

ROOT = Path(__file__).resolve().parents[1]
STUDY_ONLY = ("pydantic", "matplotlib", "yaml", "tqdm", "PIL")  # numpy/filelock may come with torch itself

# Runs first in a subprocess: the named top-level modules cannot be imported, as on a machine where
# they are not installed (a None in sys.modules makes `import` raise ModuleNotFoundError and
# importlib.util.find_spec answer None).
_BLOCK = """
import sys
sys.modules.update(dict.fromkeys({blocked!r}))
"""


def _python(code: str, *, blocked=(), timeout=300) -> subprocess.CompletedProcess:
    # The package as this test process imports it (the tree or the install), first on the path.
    path = os.pathsep.join([str(Path(fasttrick.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    program = _BLOCK.format(blocked=set(blocked)) + code
    return subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_importing_the_optimizer_imports_no_study_dependency():
    """Beyond what torch itself imports (torch.hub imports tqdm when it is there), fasttrick adds none."""
    out = _python(
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import fasttrick\n"
        "from fasttrick import FusedSGDW\n"
        f"print(sorted(m for m in set(sys.modules) - before if m.partition('.')[0] in {STUDY_ONLY!r}))\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_without_the_study_extra_the_optimizer_and_env_work_and_the_cli_names_the_extra():
    """As after a bare `pip install fasttrick`: a step with backend auto and `python -m fasttrick.env` run,
    nothing of the study runner is imported, and `python -m fasttrick.train` says what to install."""
    out = _python(
        "import runpy, sys, torch\n"
        "from fasttrick import FusedSGDW\n"
        "p = torch.ones(4, requires_grad=True)\n"
        "p.grad = torch.ones(4)\n"
        "FusedSGDW([p], lr=0.5, momentum=0.9).step()\n"
        "assert p.tolist() == [0.5] * 4, p\n"
        "from fasttrick.env import main\n"
        "main()\n"
        f"print('study modules:', sorted(m for m, v in sys.modules.items() if v and m.partition('.')[0] in {STUDY_ONLY!r}))\n"
        "sys.argv = ['fasttrick.train', '--config', 'configs/smoke.yaml']\n"
        "try:\n"
        "    runpy.run_module('fasttrick.train', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print('train exit status', exit.code)\n",
        blocked=_backend.STUDY_MODULES,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "study modules: []" in out.stdout
    assert "backends cpu" in out.stdout
    assert 'pip install "fasttrick[study]"' in out.stdout  # env says how to get the study runner
    assert "train exit status 2" in out.stdout
    assert 'pip install "fasttrick[study]"' in out.stderr and "pydantic" in out.stderr


def test_pyproject_splits_the_optimizer_from_the_study_runner():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {req.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip() for req in project["dependencies"]}
    assert names == {"torch", "triton"}
    extras = project["optional-dependencies"]
    study = {req.split(">")[0].split("=")[0].strip() for req in extras["study"]}
    # The CLI's message names the same packages, less tensorboard: without it a run logs no event files and
    # says so once (fasttrick.engine.board), so it is installed with the study but not required by it.
    assert study == set(_backend.STUDY_MODULES.values()) | {"tensorboard"}
    # The README's quick start installs ".[dev]" (scripts/setup.sh): everything, study runner included.
    assert any(
        req.startswith("fasttrick[") and {"study", "dali", "ray"} <= set(req[10:-1].split(",")) for req in extras["dev"]
    )
