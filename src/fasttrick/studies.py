"""The built-in studies: configs/*.yaml, shipped inside the package as fasttrick/configs (setup.py maps the
checkout's configs/ folder there), found by name: `--config group1`.

Ground floor: imports nothing else of the package (the CLI lists studies before the study extra loads).
"""

from __future__ import annotations

from pathlib import Path


class UnknownStudy(LookupError):
    """A --config value that is neither a file nor a built-in study's name."""


def config_dir() -> Path:
    """The folder of the built-in studies: the installed package's copy, else the checkout's configs/."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def builtin() -> dict[str, Path]:
    """Each built-in study's name (its file's stem) and file, sorted by name."""
    return {path.stem: path for path in sorted(config_dir().glob("*.yaml"))}


def summary(path: Path) -> str:
    """A study's one line: the first sentence of the comment its file opens with, at most 110 characters."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        words.extend(line.lstrip("#").split())
    text = " ".join(words)
    end = text.find(". ")
    text = text[: end + 1] if end >= 0 else text
    return text if len(text) <= 110 else text[:109].rstrip() + "…"


def listing() -> str:
    studies = builtin()
    width = max((len(name) for name in studies), default=0)
    return "\n".join(f"  {name:<{width}}  {summary(path)}" for name, path in studies.items())


def resolve(value: str) -> Path:
    """The grid file that `--config value` names: an existing file; else a built-in study by name (`group1`),
    or by its path in a checkout (`configs/group1.yaml`, so the documented commands work from an install)."""
    path = Path(value)
    if path.is_file():
        return path
    studies = builtin()
    name = path.stem if path.suffix in (".yaml", ".yml") and path.parent in (Path("."), Path("configs")) else value
    if name in studies:
        return studies[name]
    raise UnknownStudy(
        f"--config {value}: no such file, and no built-in study of that name; the built-in studies "
        f"(python -m fasttrick.train --list):\n{listing()}"
    )
