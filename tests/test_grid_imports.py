"""The package's shape: no import circle (every import, function-level ones included), imports that point
one way, every module under 400 lines and every function under 60, and ``import fasttrick.grid`` loading
neither the runner nor the engine. Reads source files only: well under a second."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fasttrick

ROOT = Path(fasttrick.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in it (a submodule named in ``from pkg import
    sub`` counts as ``pkg.sub``, not as ``pkg``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def test_no_import_circle():
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(name for name in GRAPH if name in reachable(name))
    assert not circles, f"modules on an import circle: {circles}"


def test_imports_point_down():
    for name, deps in GRAPH.items():
        if name.startswith("fasttrick.engine"):
            assert "fasttrick.env" not in deps, name  # env.py is a command-line module
            assert not any(d.startswith("fasttrick.grid") for d in deps), name
        if name.startswith(("fasttrick.config", "fasttrick.data")):
            allowed = name.split(".")[1]
            assert all(d.startswith(f"fasttrick.{allowed}") for d in deps), (name, deps)  # ground floor
    assert "fasttrick.data.sources" not in GRAPH["fasttrick.grid.memory"]  # data's public names, not its insides


def test_modules_and_functions_are_small():
    for name, path in MODULES.items():
        source = path.read_text()
        assert len(source.splitlines()) < 400, name
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            kernel = any("jit" in ast.unparse(d) for d in node.decorator_list)  # a Triton kernel body
            table = name == "fasttrick.train" and node.name == "parser"  # the CLI's argument table
            if not (kernel or table):
                assert node.end_lineno - node.lineno < 60, f"{name}.{node.name}"


def test_importing_the_grid_package_loads_neither_runner_nor_engine():
    code = (
        "import sys, fasttrick.grid; "
        "print(sorted(m for m in ('fasttrick.grid.runner', 'fasttrick.engine', 'pydantic') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
