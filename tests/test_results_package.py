"""fasttrick.results as a package: what it imports, its size, and how it treats files (permissions, symlinks)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fasttrick import runfiles
from fasttrick.results.runs import NotAGridFolder, read_grid
from fasttrick.results.summary import write_summary

from results_helpers import config, curve, metrics, sgd, write_study

SRC = Path(__file__).resolve().parents[1] / "src" / "fasttrick"
RESULTS_MODULES = [*sorted((SRC / "results").glob("*.py")), SRC / "runfiles.py", SRC / "report.py"]


def test_reading_results_imports_neither_the_engine_nor_pydantic():
    """A fresh interpreter: the report CLI and every results module, then what got imported."""
    modules = ", ".join(f"fasttrick.results.{p.stem}" for p in RESULTS_MODULES if p.parent.name == "results")
    code = f"import sys, fasttrick.report, {modules}; print('\\n'.join(sys.modules))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    heavy = {"pydantic", "fasttrick.engine", "fasttrick.grid", "fasttrick.config", "fasttrick.models", "fasttrick.data"}
    assert not {m for m in loaded if m.split(".")[0] == "pydantic" or ".".join(m.split(".")[:2]) in heavy}


def _imports(path: Path) -> set[str]:
    """The fasttrick modules a module imports, resolved to dotted names."""
    package = ["fasttrick", *path.relative_to(SRC).with_suffix("").parts[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" for a in node.names} if node.module is None else {target}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fasttrick"):
            found.add(node.module)
    return found


def test_results_import_only_runfiles_and_each_other_without_a_circle():
    graph = {f"fasttrick.{'.'.join(p.relative_to(SRC).with_suffix('').parts)}": _imports(p) for p in RESULTS_MODULES}
    for module, targets in graph.items():
        if module != "fasttrick.report":
            assert all(t.startswith(("fasttrick.results", "fasttrick.runfiles")) for t in targets), (module, targets)

    def visit(module: str, path: tuple[str, ...]) -> None:
        for target in graph.get(module, ()):
            assert target not in path, f"import circle: {' -> '.join((*path, target))}"
            visit(target, (*path, target))

    for module in graph:
        visit(module, (module,))


@pytest.mark.parametrize("path", RESULTS_MODULES, ids=lambda p: p.name)
def test_modules_under_400_lines_and_functions_under_60(path):
    source = path.read_text()
    assert len(source.splitlines()) < 400
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name}"


def _study(tmp_path: Path) -> Path:
    runs = {
        "calm-seed0": (config(0, sgd(), {"name": "constant"}), metrics(curve(0.90))),
        "blown-seed0": (
            config(0, sgd(lr=5.0), {"name": "constant"}),
            metrics([0.3, 0.97, 0.2], train_loss=[2.0, 1.0, 50.0]),
        ),
    }
    return write_study(tmp_path / "study", "study", runs)


def test_run_files_and_summaries_get_the_same_umask_permissions(tmp_path):
    """Under umask 027, status.json (the trainer's writer) and summary.md, summary.csv, plots (the results'
    writer) all come out 0640, as open() would make them; mkstemp alone would give 0600."""
    folder = _study(tmp_path)
    code = (
        "import sys; from pathlib import Path; from fasttrick import runfiles; "
        "from fasttrick.results.summary import write_summary; folder = Path(sys.argv[1]); "
        "runfiles.write_status(folder / 'calm-seed0', 'finished', 30); write_summary(folder)"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, preexec_fn=lambda: os.umask(0o027))
    written = [folder / "calm-seed0" / "status.json", folder / "summary.md", folder / "summary.csv"]
    written += [folder / "plots" / "lr.png", folder / "blown-seed0" / "diagnosis.json"]
    assert {path.name: path.stat().st_mode & 0o777 for path in written} == {path.name: 0o640 for path in written}


def test_best_never_names_a_diverged_run(tmp_path):
    """blown reached 97% at epoch 2 before its loss exploded: the headline's best is calm."""
    folder = _study(tmp_path)
    text = write_summary(folder).read_text()
    assert "Best (of the runs that did not diverge): **calm-seed0**" in text
    (folder / "calm-seed0" / "status.json").write_text(json.dumps({"status": "diverged", "epoch": 30}))
    assert "Best: none yet" in write_summary(folder).read_text()


def test_symlinked_run_folders_and_files_are_not_followed(tmp_path):
    folder = _study(tmp_path)
    elsewhere = write_study(
        tmp_path / "elsewhere", "other", {"secret-seed0": (config(0, sgd(), {}), metrics([0.5] * 3))}
    )
    (folder / "linked-seed0").symlink_to(elsewhere / "secret-seed0", target_is_directory=True)
    (folder / "calm-seed0" / "metrics.jsonl").unlink()
    (folder / "calm-seed0" / "metrics.jsonl").symlink_to(elsewhere / "secret-seed0" / "metrics.jsonl")
    with pytest.warns(UserWarning, match="symlink, not followed"):
        records = {r.name: r for r in read_grid(folder)}
    assert "linked-seed0" not in records and records["calm-seed0"].metrics == []


def test_a_symlinked_plots_folder_is_refused(tmp_path):
    folder = _study(tmp_path)
    (tmp_path / "outside").mkdir()
    (folder / "plots").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(NotAGridFolder, match="plots is a symlink"):
        write_summary(folder)
    assert list((tmp_path / "outside").iterdir()) == []


def test_atomic_write_leaves_no_temp_file_and_replaces_a_symlink_rather_than_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.md").symlink_to(target)
    runfiles.atomic_write(tmp_path / "out" / "summary.md", "new")
    assert target.read_text() == "keep" and (tmp_path / "out" / "summary.md").read_text() == "new"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["summary.md"]


def test_read_metrics_skips_rows_that_are_not_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "val_acc": 0.5}\n[1, 2]\n{"val_acc": 0.6}\n{"epoch": 2, "val_acc": NaN}\n{"epo')
    with pytest.warns(UserWarning):
        rows = runfiles.read_metrics(path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [runfiles.finite(r["val_acc"]) for r in rows] == [0.5, None]
