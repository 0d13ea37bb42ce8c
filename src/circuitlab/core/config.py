"""Configs are frozen dataclasses: validated on construction, loadable from TOML.

The dataclass is the one source of defaults. A TOML file (or a CLI) only overrides fields;
an unknown key is an error rather than a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from circuitlab.core.errors import CircuitlabError

T = TypeVar("T")


def require(condition: bool, message: str) -> None:
    """Raise a user-facing error unless `condition` holds (for use in __post_init__)."""
    if not condition:
        raise CircuitlabError(message)


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise CircuitlabError(
            f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if isinstance(value, list) and str(hints.get(key, "")).startswith("tuple"):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise CircuitlabError(f"bad {cls.__name__}: {e}") from None


def read_toml(path: str | Path, table: str | None = None) -> dict[str, Any]:
    """The TOML file at `path` as a dict, or one [table] of it; errors say which file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CircuitlabError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise CircuitlabError(f"config file {path} is not valid TOML: {e}") from None
    if table is not None:
        if table not in data:
            raise CircuitlabError(f"config file {path} has no [{table}] table")
        data = data[table]
    return dict(data)


def load_config(cls: type[T], path: str | Path, table: str | None = None) -> T:
    """Read `cls` from a TOML file, optionally from one [table] of it."""
    return config_from_dict(cls, read_toml(path, table))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
