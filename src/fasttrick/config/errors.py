"""Config errors: :class:`ConfigError` (one line per problem, bounded) and :func:`describe_errors`, which
turns pydantic's errors into ``key.path: problem (got value); did you mean ...`` lines."""

from __future__ import annotations

import difflib
import re
from typing import get_args

from pydantic import BaseModel, ValidationError

from .schema import (
    AdamConfig,
    ConstantConfig,
    CosineConfig,
    CosineRestartsConfig,
    DataConfig,
    FusedSGDWConfig,
    ModelConfig,
    MultiStepConfig,
    NAdamConfig,
    PlateauConfig,
    RunConfig,
    SGDConfig,
    StepConfig,
    TrainConfig,
    WarmupConfig,
)

# Bounds on what a config error prints, whatever the input: a grid of 10 000 bad runs, or a value of a
# megabyte, still gives a screenful. 40 lines of <= 300 characters is ~12 kB.
MAX_PROBLEMS = 40
MAX_PROBLEM_CHARS = 300


def clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text) - limit + 40} more characters)"


class ConfigError(ValueError):
    """A config that cannot run; ``problems`` holds one line per problem (key path: what, suggestion).

    At most MAX_PROBLEMS lines of at most MAX_PROBLEM_CHARS characters are kept; a last line counts the rest.
    """

    def __init__(self, problems: list[str]):
        problems = list(problems)
        kept = [clip(str(p)) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            kept.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        self.problems = kept
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


# ---------------------------------------------------------------------------------------------
# Error messages: key path + did-you-mean
# ---------------------------------------------------------------------------------------------


def _tag_models() -> dict[str, dict[str, type[BaseModel]]]:
    out: dict[str, dict[str, type[BaseModel]]] = {"optimizer": {}, "scheduler": {}}
    for block, models in (
        ("optimizer", (FusedSGDWConfig, SGDConfig, AdamConfig, NAdamConfig)),
        ("scheduler", (StepConfig, MultiStepConfig, CosineConfig, CosineRestartsConfig, PlateauConfig, ConstantConfig)),
    ):
        for model in models:
            for tag in get_args(model.model_fields["name"].annotation):
                out[block][tag] = model
    return out


_TAGS = _tag_models()
_SUBMODELS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "warmup": WarmupConfig,
}


def _clean_loc(loc: tuple, root: type[BaseModel]) -> tuple[list[str], type[BaseModel] | None]:
    """Drop pydantic's union-tag segments from ``loc``; also return the model that holds the last key."""
    parts: list[str] = []
    holder: type[BaseModel] | None = root
    i = 0
    while i < len(loc):
        part = loc[i]
        parts.append(str(part))
        if holder is root and part in _TAGS and i + 1 < len(loc) and loc[i + 1] in _TAGS[part]:
            holder = _TAGS[part][loc[i + 1]]
            i += 2
            continue
        if holder is root and part in _SUBMODELS:
            holder = _SUBMODELS[part]
        elif i < len(loc) - 1:
            holder = None
        i += 1
    return parts, holder


def describe_errors(err: ValidationError, *, root: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """One line per pydantic error: ``path: problem (got value); did you mean ...``."""
    lines = []
    for e in err.errors()[: MAX_PROBLEMS + 1]:  # ConfigError keeps MAX_PROBLEMS lines: do not describe more
        parts, holder = _clean_loc(tuple(e["loc"]), root)
        path = prefix + ".".join(parts) if parts else prefix.rstrip(".") or "config"
        kind = e["type"]
        if kind == "extra_forbidden":
            key = parts[-1]
            allowed = list(holder.model_fields) if holder is not None else []
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
            msg = f"{path}: unknown key"
            if hint:
                msg += f"; did you mean '{hint[0]}'?"
            elif allowed:
                msg += f" (valid here: {', '.join(allowed)})"
            if key == "momentum" and holder in (AdamConfig, NAdamConfig):
                msg += " (Adam-family optimizers take betas: [beta1, beta2] instead of momentum)"
            lines.append(msg)
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            block = parts[-1] if parts else ""
            tags = list(_TAGS.get(block, {}))
            given = e.get("ctx", {}).get("tag", None)
            if kind == "union_tag_not_found":
                lines.append(f"{path}.name: missing; one of {', '.join(tags)}")
                continue
            hint = difflib.get_close_matches(str(given), tags, n=1, cutoff=0.4)
            msg = f"{path}.name: unknown {block} {given!r}; one of {', '.join(tags)}"
            lines.append(msg + (f"; did you mean '{hint[0]}'?" if hint else ""))
        elif kind == "literal_error":
            expected = e.get("ctx", {}).get("expected", "")
            choices = re.findall(r"'([^']*)'", expected)
            hint = difflib.get_close_matches(str(e.get("input")), choices, n=1, cutoff=0.4)
            msg = f"{path}: {e['msg']} (got {clip(repr(e.get('input')), 80)})"
            lines.append(msg + (f"; did you mean '{hint[0]}'?" if hint else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = (
                ""
                if kind == "value_error" or isinstance(e.get("input"), dict)
                else f" (got {clip(repr(e.get('input')), 80)})"
            )
            lines.append(f"{path}: {msg}{shown}")
    return lines
