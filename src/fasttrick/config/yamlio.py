"""YAML in and out, bounded and unambiguous: YAML 1.2's scalars, no duplicate keys, no aliases.

PyYAML follows YAML 1.1: ``1e-3`` is a string, ``no``, ``off`` and ``yes`` are booleans (so ``name: no``
names nothing, and ``lr: yes`` is 1.0), ``1:30`` is the integer 90. :func:`load_yaml` reads scalars as
YAML 1.2 does: ``1e-3`` is a float, only ``true`` and ``false`` are booleans, integers are decimal
(or 0x/0o). A key given twice in one mapping is an error naming both lines (PyYAML keeps the later one
silently). Aliases (``*name``)
are refused: each one copies a subtree, so a 12-line file of nested aliases expands to gigabytes
(and gigabytes of error text once the copies reach run names and messages). No config needs them:
``base:`` and ``profiles:`` share settings between runs.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ComposerError(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not accepted in a config; write the values out, or share "
                "them through base: or profiles:",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice in one mapping, on line {first[key]} and line {line}; keep one",
                        key_node.start_mark,
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_first, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_first].append(("tag:yaml.org,2002:float", _FLOAT))

# YAML 1.2's core schema: booleans are true/false only, integers decimal, 0o octal or 0x hex.
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9](?:_?[0-9])*|0o[0-7]+|0x[0-9a-fA-F]+)$")
for _first, _resolvers in list(_Loader.yaml_implicit_resolvers.items()):
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
    ]
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:bool", _BOOL))
for _first in "-+0123456789":
    _Loader.yaml_implicit_resolvers[_first].append(("tag:yaml.org,2002:int", _INT))
_Loader.yaml_constructors = {
    **yaml.SafeLoader.yaml_constructors,
    "tag:yaml.org,2002:bool": lambda loader, node: loader.construct_scalar(node).lower() == "true",
    "tag:yaml.org,2002:int": lambda loader, node: _int(loader.construct_scalar(node)),
}


def _int(text: str) -> int:
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2's scalars (``1e-3`` a float, ``no`` a string) that refuses duplicate keys
    and aliases."""
    return yaml.load(text, Loader=_Loader)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)
