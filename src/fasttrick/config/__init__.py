"""Typed configuration of one training run, and of a grid file that expands into many.

- :mod:`.schema`: the pydantic models (:class:`RunConfig`, :class:`GridFile`), epoch shares, profiles;
- :mod:`.yamlio`: YAML in (1e-3 as a float, no aliases) and out;
- :mod:`.errors`: :class:`ConfigError` and the key-path / did-you-mean messages (:func:`describe_errors`).

This package imports nothing else of fasttrick.
"""

from .errors import ConfigError, describe_errors
from .schema import (
    PROFILE_DEFAULTS,
    AdamConfig,
    DataConfig,
    EpochSpec,
    FusedSGDWConfig,
    GridFile,
    NAdamConfig,
    ProfileName,
    RunConfig,
    SGDConfig,
    config_warnings,
    first_difference,
    is_profile,
    resolve_epochs,
)
from .yamlio import dump_yaml, load_yaml

__all__ = [
    "PROFILE_DEFAULTS",
    "AdamConfig",
    "ConfigError",
    "DataConfig",
    "EpochSpec",
    "FusedSGDWConfig",
    "GridFile",
    "NAdamConfig",
    "ProfileName",
    "RunConfig",
    "SGDConfig",
    "config_warnings",
    "describe_errors",
    "dump_yaml",
    "first_difference",
    "is_profile",
    "load_yaml",
    "resolve_epochs",
]
