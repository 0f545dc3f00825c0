"""The documents' examples run as written: every ```python block of README.md and docs/*.md on a CPU (unless
its first line says `# requires: <what>`), and every shell command the documents quote, run wherever a CPU
can run it cheaply; the others are listed in COMMANDS with the reason they are not run here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_summary import write_synthetic_grid

import fasttrick

from results_helpers import write_lr_momentum

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STARTS_A_COMMAND = re.compile(r"^(\w+=(\$\([^)]*\)|\S+) )*(python|pip|source|bash|ray|torchrun|tensorboard) ")

RUN, DRY = "run", "dry-run"  # run as written; run with --dry-run appended (checks arguments, config, folder)
_GPU = "trains a study for minutes to hours on a GPU"
COMMANDS = {
    "source scripts/setup.sh && python -m fasttrick.train --config configs/smoke.yaml": "CI runs it (.ci/run)",
    "source scripts/setup.sh && python -m pytest -q": "CI runs it (.ci/run)",
    "python -m pytest -q": "CI runs it (.ci/run)",
    "pip install .": "tests/test_wheel.py builds and installs the wheel with build isolation",
    'pip install ".[study]"': "tests/test_wheel.py builds and installs the wheel with build isolation",
    'pip install -e ".[dev]"': "scripts/setup.sh installs it so (CI)",
    "python -m fasttrick.train --list": RUN,
    "python -m fasttrick.train --config group2": DRY,
    "python -m fasttrick.train --config group2 --dry-run": RUN,
    "python -m fasttrick.train --config smoke --sweep optimizer.lr=0.05,0.1 --dry-run": RUN,
    "python -m fasttrick.train --config configs/smoke.yaml --sweep optimizer.weight_decay=0,5e-4 --sweep seed=0,1 --dry-run": RUN,
    "python -m fasttrick.report runs/*/": RUN,
    "python -m pytest benchmarks/ --benchmark-only --benchmark-json=bench.json && python benchmarks/summarize.py "
    "bench.json": "the benchmarks take several minutes; benchmarks/ tests summarize.py",
    "OUT=gpu-results bash benchmarks/gpu_check.sh --part 1": "needs an NVIDIA GPU",
    "OUT=gpu-part1 bash benchmarks/gpu_check.sh --part 1": "needs an NVIDIA GPU",
    "OUT=gpu-part2 bash benchmarks/gpu_check.sh --part 2": "needs an NVIDIA GPU",
    "OUT=$(mktemp -d) bash benchmarks/gpu_check.sh --dry-run": "CI runs it (.ci/run, the device stack)",
    'source .ci/device-stack.sh && OUT=$(mktemp -d) PYTHON="$DEVICE_PY" bash benchmarks/gpu_check.sh --dry-run': (
        "CI runs it (.ci/run)"
    ),
    "source .venv/bin/activate && export PYTHONPATH=$PWD/src": "sets up a shell; the test environment is one",
    "python scripts/mutation.py diagnosis --jobs 2": "minutes: it reruns test files per mutant",
    "python scripts/mutation.py claims --jobs 2": "minutes: it reruns test files per mutant",
    "python scripts/mutation.py reference --jobs 2": "minutes: it reruns test files per mutant",
    "python scripts/mutation.py claims --list": RUN,
    "python -m fasttrick.train --config NAME|FILE [--profile quick|faithful] [--out DIR] [--epochs N]": (
        "a synopsis, not a command"
    ),
    "python -m fasttrick.train --config configs/smoke.yaml --workers 2": DRY,
    "python -m fasttrick.train --config configs/group2.yaml --workers 2": DRY,
    "python -m fasttrick.train --config configs/group2.yaml --executor ray --gpus-per-run 0.5": DRY,
    "ray start --head --port=6379": "starts a Ray cluster",
    "python -m fasttrick.train --config configs/group2.yaml --executor ray --address auto --out /nfs/runs/group2": (
        "needs a Ray cluster and its shared folder"
    ),
    "python -m fasttrick.train --config configs/group2.yaml --restart-failed": DRY,
    "python -m fasttrick.train --config configs/lr_momentum.yaml --fuse 4 --dry-run": RUN,
    "python -m fasttrick.train --config configs/lr_momentum.yaml --fuse 4": DRY,
    "python -m fasttrick.train --config configs/group3.yaml --fuse auto": DRY,
    "python -m fasttrick.report runs/lr_momentum runs/group2 runs/group3 [--out DIR]": RUN,
    **{
        f"python -m fasttrick.train --config configs/{name}.yaml --out runs/{name}": DRY
        for name in ("group2", "lr_momentum", "group3", "schedules", "l2", "group1")
    },
}
WHY_NOT_RUN = {"torch.distributed": "needs an initialised process group (tests/test_distributed.py runs it)"}


def _blocks() -> list[tuple[str, str, str]]:
    """(where, language, text) of every fenced block of the documents."""
    found = []
    for doc in DOCS:
        lines, start, language = doc.read_text().splitlines(), None, ""
        for number, line in enumerate(lines, 1):
            if line.startswith("```") and start is None:
                start, language = number, line[3:].strip()
            elif line.startswith("```"):
                found.append((f"{doc.relative_to(ROOT)}:{start}", language, "\n".join(lines[start : number - 1])))
                start = None
    return found


def _commands() -> dict[str, str]:
    """Each shell command quoted in a non-Python block (its comment and spacing dropped) -> where."""
    commands = {}
    for where, language, text in _blocks():
        for line in text.splitlines() if language != "python" else ():
            command = " ".join(line.split("  #")[0].split())
            if STARTS_A_COMMAND.match(command):
                commands.setdefault(command, where)
    return commands


def _env() -> dict[str, str]:
    """`python` is this interpreter, importing this package."""
    path = os.pathsep.join([str(Path(fasttrick.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _python_blocks():
    for where, language, text in _blocks():
        if language == "python":
            first = text.splitlines()[0] if text else ""
            need = first.removeprefix("# requires:").strip() if first.startswith("# requires:") else None
            yield pytest.param(text, need, id=where)


@pytest.mark.parametrize(("code", "requires"), list(_python_blocks()))
def test_python_block_runs(code, requires, tmp_path):
    if requires is not None:
        if requires.startswith("CIFAR-10"):
            if not os.environ.get("FASTTRICK_DATA"):
                pytest.skip("needs CIFAR-10: FASTTRICK_DATA is unset")
        elif requires.startswith("cuda"):
            if not torch.cuda.is_available():
                pytest.skip("needs a CUDA device")
        else:
            pytest.skip(next((why for key, why in WHY_NOT_RUN.items() if requires.startswith(key)), requires))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_every_quoted_command_is_run_or_says_why_not():
    quoted = _commands()
    unlisted = {command: where for command, where in quoted.items() if command not in COMMANDS}
    assert not unlisted, f"commands in the documents that tests/test_docs.py neither runs nor explains: {unlisted}"
    assert not set(COMMANDS) - set(quoted), "COMMANDS lists commands no document quotes any more"


def _runs_folder(cwd: Path) -> None:
    """Finished studies, as the report commands expect them in runs/."""
    write_lr_momentum(cwd / "runs" / "lr_momentum")
    write_synthetic_grid(cwd / "runs" / "group2")
    write_synthetic_grid(cwd / "runs" / "group3")


@pytest.mark.parametrize("command", [c for c, how in COMMANDS.items() if how in (RUN, DRY)])
def test_quoted_command_runs(command, tmp_path):
    """Run outside the checkout (studies by their configs/ path come from the package), except the scripts."""
    cwd = ROOT if command.startswith("python scripts/") else tmp_path
    if "fasttrick.report" in command:
        _runs_folder(tmp_path)
    line = command.replace(" [--out DIR]", "") + (" --dry-run" if COMMANDS[command] == DRY else "")
    out = subprocess.run(["bash", "-c", line], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    if "fasttrick.report" in command:
        assert (tmp_path / "runs" / "REPORT.md").is_file() or any((tmp_path / "runs").glob("*/REPORT.md"))
    elif "fasttrick.train" in command:
        assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_the_checkouts_folders_hold_what_the_documents_name():
    assert shutil.which("bash")
    for path in ("configs/group1.yaml", "scripts/setup.sh", "benchmarks/gpu_check.sh", "scripts/mutation.py"):
        assert (ROOT / path).exists(), path
