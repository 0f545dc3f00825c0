"""Mutation testing: change one operator or constant of a module at a time and see whether its tests notice.

    python scripts/mutation.py diagnosis           # src/fasttrick/results/diagnosis.py vs its tests
    python scripts/mutation.py claims              # results/claims.py, evidence.py, select.py vs the claim tests
    python scripts/mutation.py reference           # ops/reference.py vs test_sgdw_numerics + test_sgdw_op -k reference
    python scripts/mutation.py diagnosis --list    # the mutants only, numbered, without running anything

Why not mutmut: it rewrites the source tree in place and runs the test command once per mutant in a new
process; here every new process pays torch's import (~6 s on the 2-core CI machine, more than the tests). This
script copies src/ to a temporary folder, imports torch once, and forks one child per mutant that writes the
mutated file into the copy and runs pytest in-process, so a mutant costs only its tests. The working tree is
never modified.

Mutations (each applied alone, at one place): comparison flips (< <=, > >=, == !=, in / not in, is / is not),
`and` <-> `or`, arithmetic swaps (+ -, * /), `not x` -> `x`, numbers (n -> 2n for floats, n -> n + 1 for ints),
the outcome names swapped (CONFIRMED <-> REFUTED, FLAGGED <-> HEALTHY), and `True` <-> `False`. Docstrings and
f-string text are not mutated. A mutant is killed when the tests fail (or time out); it survives when they pass.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "diagnosis": (["fasttrick/results/diagnosis.py"], ["tests/test_diagnosis.py", "tests/test_claims.py"], []),
    "claims": (
        ["fasttrick/results/claims.py", "fasttrick/results/evidence.py", "fasttrick/results/select.py"],
        ["tests/test_claims.py"],
        [],
    ),
    "reference": (
        ["fasttrick/ops/reference.py"],
        ["tests/test_sgdw_numerics.py", "tests/test_sgdw_op.py"],
        ["-k", "reference"],
    ),
}
TIMEOUT_S = 300  # a mutant whose tests run this long (an endless loop) counts as killed
SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.And: ast.Or, ast.Or: ast.And,
}  # fmt: skip
NAME_SWAPS = {"CONFIRMED": "REFUTED", "REFUTED": "CONFIRMED", "FLAGGED": "HEALTHY", "HEALTHY": "FLAGGED"}


@dataclass(frozen=True)
class Mutant:
    path: str
    line: int
    what: str
    source: str


def _strings_not_mutated(tree: ast.AST) -> set[int]:
    """ids of nodes inside docstrings and f-strings (text, not logic)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def mutants(path: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _strings_not_mutated(tree)
    sites = [node for node in ast.walk(tree) if id(node) not in skip]
    found = []
    for index, node in enumerate(sites):
        for what in _mutations(node):
            mutated = ast.parse(source)
            mutated_skip = _strings_not_mutated(mutated)
            target = [n for n in ast.walk(mutated) if id(n) not in mutated_skip][index]
            _apply(target, what)
            found.append(Mutant(path, getattr(node, "lineno", 0), what, ast.unparse(mutated)))
    return found


def _mutations(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Compare):
        return [f"compare {i}" for i, op in enumerate(node.ops) if type(op) in SWAPS]
    if isinstance(node, (ast.BoolOp, ast.BinOp)):
        return ["operator"] if type(node.op) in SWAPS else []
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ["drop not"]
    if isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
        return ["number"]
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return ["bool"]
    if isinstance(node, ast.Name) and node.id in NAME_SWAPS and isinstance(node.ctx, ast.Load):
        return ["outcome name"]
    return []


def _apply(node: ast.AST, what: str) -> None:
    if what.startswith("compare"):
        i = int(what.split()[1])
        node.ops[i] = SWAPS[type(node.ops[i])]()
    elif what == "operator":
        node.op = SWAPS[type(node.op)]()
    elif what == "drop not":
        node.op = ast.UAdd()  # +x: truthiness of x instead of not x (bool(+True) is True)
    elif what == "number":
        node.value = node.value * 2 if isinstance(node.value, float) else node.value + 1
    elif what == "bool":
        node.value = not node.value
    elif what == "outcome name":
        node.id = NAME_SWAPS[node.id]


def describe(mutant: Mutant, original: str) -> str:
    line = original.splitlines()[mutant.line - 1].strip() if mutant.line else ""
    return f"{mutant.path}:{mutant.line} [{mutant.what}] {line[:90]}"


def start(copy: Path, mutant: Mutant, tests: list[str], extra: list[str]) -> int:
    """Fork a child that writes the mutant into its copy of src/ and runs pytest in-process; its pid. The child
    exits 0 when the tests pass (the mutant survived)."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(TIMEOUT_S)
        (copy / mutant.path).write_text(mutant.source)
        sys.path.insert(0, str(copy))
        os.environ["PYTHONPATH"] = str(copy)
        os.chdir(REPO)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests, *extra])
        os._exit(0 if code == 0 else 1)
    return pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (one process each)")
    parser.add_argument("--only", default="", help="comma-separated mutant numbers (as --list numbers them) to test")
    args = parser.parse_args()
    files, tests, extra = TARGETS[args.target]
    originals = {path: (REPO / "src" / path).read_text() for path in files}
    everything = [m for path, source in originals.items() for m in mutants(path, source)]
    if args.list:
        for number, mutant in enumerate(everything, 1):
            print(number, describe(mutant, originals[mutant.path]))
        return 0
    sys.dont_write_bytecode = True  # a stale .pyc of an earlier mutant must never be imported
    with tempfile.TemporaryDirectory(prefix="fasttrick-mutation-") as tmp:
        copies = [Path(tmp) / f"src{slot}" for slot in range(args.jobs)]
        for copy in copies:  # one copy per concurrent child: each writes its mutant into its own
            shutil.copytree(REPO / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        import torch  # noqa: F401  (paid once here, inherited by every child)

        start_time, survivors, running = time.time(), [], {}
        chosen = {int(n) for n in args.only.split(",") if n}
        pending = [(n, m) for n, m in enumerate(everything, 1) if not chosen or n in chosen]
        while pending or running:
            while pending and len(running) < args.jobs:
                number, mutant = pending.pop(0)
                slot = next(i for i in range(args.jobs) if i not in {s for s, _, _ in running.values()})
                for path, source in originals.items():  # undo the slot's previous mutant
                    (copies[slot] / path).write_text(source)
                running[start(copies[slot], mutant, tests, extra)] = (slot, number, mutant)
            pid, status = os.wait()
            slot, number, mutant = running.pop(pid)
            killed = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
            if not killed:
                survivors.append((number, mutant))
            verdict = "killed  " if killed else "SURVIVED"
            print(f"{number}/{len(everything)} {verdict} {describe(mutant, originals[mutant.path])}", flush=True)
        elapsed = time.time() - start_time
        tested = len(chosen) if chosen else len(everything)
        print(f"\n{args.target}: {tested - len(survivors)} of {tested} mutants killed in {elapsed:.0f} s")
        for number, mutant in sorted(survivors, key=lambda item: item[0]):
            print(f"survived #{number}:", describe(mutant, originals[mutant.path]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
