"""Configs are frozen dataclasses: validated on construction, loadable from TOML.

The dataclass is the one schema of a setting: its default, its type and its help (the help
travels in the field's metadata, see `option`), so the CLI, TOML files and config.json
are all derived from it and never restate it. A TOML file (or a CLI) only overrides
fields; an unknown key or a value of the wrong type is an error rather than a silently
ignored typo.

A config may hold another config (`nested`). `flatten=True` keeps the nested fields at
the top level of the config's dict form, so a config that grew a nested part still reads
and writes the same TOML and config.json as before it did (old run directories resume).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_user_text

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


def require(condition: bool, message: str) -> None:
    """Raise a user-facing error unless `condition` holds (for use in __post_init__)."""
    if not condition:
        raise CircuitlabError(message)


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    envvar: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    show: Callable[[Any], str] | None = None,
    repeat: bool = False,
) -> Any:
    """A config field that is also a command-line option (see core/commands.py).

    `flags` replaces the derived `--field-name`; `parse` reads the option's text (a
    comma-separated list, a range like 20-29) where the field's type is not one a
    command line spells directly, and `show` writes the default back in that form;
    with `repeat` the option is given once per item and `parse` reads the list of texts.
    A tuple default is stored as given; no default makes the setting required.
    """
    metadata = {"help": help, "flags": tuple(flags), "envvar": envvar,
                "parse": parse, "show": show, "repeat": repeat}  # fmt: skip
    return dataclasses.field(default=default, metadata=metadata)


def option_of(cls: type, name: str, default: Any = _MISSING) -> Any:
    """Field `name` of config `cls` (its help, flags and parser) with another default: for
    a config that presets another's setting (the analog pipeline's LoRA runs)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default if default is _MISSING else default,
                             metadata=f.metadata)  # fmt: skip


def comma_list(kind: Callable[[str], Any] = str) -> Callable[[str], tuple[Any, ...]]:
    """A parser for a comma-separated option (`--lambdas 0,0.1,1`); '' is the empty list."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            what = "numbers" if kind in (int, float) else "values"
            raise CircuitlabError(f"bad list {text!r}: give comma-separated {what}") from None

    return parse


def nested(cls: type, *, flatten: bool = False) -> Any:
    """A field holding config `cls`, built from its defaults unless given."""
    return dataclasses.field(default_factory=cls, metadata={"nested": cls, "flatten": flatten})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flattened(cls: type) -> Iterator[dataclasses.Field[Any]]:
    for f in dataclasses.fields(cls):
        if f.metadata.get("flatten"):
            yield f


def dict_keys(cls: type) -> list[str]:
    """The keys of `cls` in its dict form (TOML, config.json): flattened parts inlined."""
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        keys.extend(dict_keys(f.metadata["nested"]) if f.metadata.get("flatten") else [f.name])
    return keys


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_type(value: Any, hint: Any, name: str) -> Any:
    """`value` as field type `hint` (a TOML list becomes a tuple, an int a float), or a
    CircuitlabError naming the setting: a TOML `layers = "three"` must not reach the code."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for option_hint in typing.get_args(hint):
            if option_hint is type(None):
                continue
            try:
                return check_type(value, option_hint, name)
            except CircuitlabError:
                pass
        raise CircuitlabError(f"setting {name}: expected {_type_name(hint)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise CircuitlabError(f"setting {name}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_type(v, args[0], name) for v in value)
        if len(args) != len(value):
            raise CircuitlabError(f"setting {name}: expected {len(args)} items, got {value!r}")
        return tuple(check_type(v, a, name) for v, a in zip(value, args, strict=True))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise CircuitlabError(f"setting {name}: expected a table, got {value!r}")
        return config_from_dict(hint, value)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        Path: lambda v: isinstance(v, str | Path),
    }.get(hint)
    if ok is None:
        return value
    if not ok(value):
        raise CircuitlabError(f"setting {name}: expected {_type_name(hint)}, got {value!r}")
    return hint(value) if hint in (float, Path) else value


def checked_values(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of `cls` from its dict form, every key and type checked
    (nested configs are built, and so validated, on the way)."""
    data = dict(data)
    names = set(dict_keys(cls))
    names.update(f.name for f in _flattened(cls))  # an already built nested part is fine
    unknown = sorted(set(data) - names)
    if unknown:
        raise CircuitlabError(
            f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(dict_keys(cls)))}"
        )
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in _flattened(cls):
        inner = {k: data.pop(k) for k in dict_keys(f.metadata["nested"]) if k in data}
        if f.name in data:
            values[f.name] = check_type(data.pop(f.name), hints[f.name], f.name)
        elif inner:
            values[f.name] = config_from_dict(f.metadata["nested"], inner)
    for key, value in data.items():
        values[key] = check_type(value, hints[key], key)
    return values


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build `cls` from its dict form, checking every key and every value's type."""
    values = checked_values(cls, data)
    try:
        return cls(**values)
    except TypeError as e:
        raise CircuitlabError(f"bad {cls.__name__}: {e}") from None


def read_toml(path: str | Path, table: str | None = None) -> dict[str, Any]:
    """The TOML file at `path` as a dict, or one [table] of it; errors say which file."""
    path = Path(path)
    try:
        text = read_user_text(path)
    except CircuitlabError as e:
        raise CircuitlabError(f"config file {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CircuitlabError(f"config file {path} is not valid TOML: {e}") from None
    if table is not None:
        if table not in data:
            raise CircuitlabError(f"config file {path} has no [{table}] table")
        data = data[table]
        if not isinstance(data, dict):
            raise CircuitlabError(f"config file {path}: {table} must be a [{table}] table")
    return dict(data)


def load_config(cls: type[T], path: str | Path, table: str | None = None) -> T:
    """Read `cls` from a TOML file, optionally from one [table] of it."""
    return config_from_dict(cls, read_toml(path, table))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The dict form of `config`, which config.json records as the run's identity."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("flatten"):
            out.update(config_to_dict(value))
        elif dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = value
    return out
