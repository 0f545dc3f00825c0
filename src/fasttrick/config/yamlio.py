"""YAML in and out, bounded: floats like ``1e-3`` (YAML 1.2) instead of strings, and no aliases.

PyYAML reads ``1e-3`` as a string (YAML 1.1); :func:`load_yaml` reads it as a float. Aliases (``*name``)
are refused: each one copies a subtree, so a 12-line file of nested aliases expands to gigabytes
(and gigabytes of error text once the copies reach run names and messages). No config needs them:
``base:`` and ``profiles:`` share settings between runs.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent


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


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads ``1e-3`` / ``5E-4`` as floats, as YAML 1.2 does, and refuses aliases."""
    return yaml.load(text, Loader=_Loader)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)
