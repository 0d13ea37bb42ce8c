"""Typer commands whose options are generated from a config dataclass.

Writing every option by hand restated each default and help string next to the dataclass
that already had them, and every command merged its TOML file by its own rule. Here the
dataclass is the schema (the pattern of HfArgumentParser and TRL's parser, for typer):

    @app.command()
    @config_options(TrainConfig, table="train")
    def train(config: TrainConfig, out: Path = typer.Option(...)) -> None: ...

adds one option per field that has help (see `core.config.option`; fields of a `nested`
config too, under their own names), shows the dataclass default in --help, adds
`--config FILE` and calls the function with the built config. One rule everywhere: a
flag given on the command line (or through its environment variable) beats the TOML
file, which beats the dataclass default. The function's own parameters (paths, --resume)
stay ordinary typer options. typer reads `inspect.signature`, so the wrapper simply
carries a generated `__signature__`; click's parameter source tells an explicit flag
from a default. The TOML file holds the config's dict form (what config.json records),
in a `[table]` named after the command or at its top level.

A system whose configs live in modules that are slow to import (torch) registers its
commands with `lazy_app` / `lazy_command` instead, so that a command's config is imported
and its options generated only when that command runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from circuitlab.core.config import check_type, checked_values, config_from_dict, read_toml
from circuitlab.core.errors import CircuitlabError

_CTX = "_schema_ctx"
_FILE = "_schema_config_file"


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One generated option: the field, where it sits, and how the command line spells it."""

    field: dataclasses.Field[Any]
    hint: Any
    path: tuple[str, ...]  # attribute names from the top config down to the field

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and (
            self.field.default_factory is dataclasses.MISSING
        )

    @property
    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def leaves(cls: type, path: tuple[str, ...] = ()) -> list[_Leaf]:
    """The fields of `cls` (nested configs opened) that carry help: the command's options."""
    hints = typing.get_type_hints(cls)
    found: list[_Leaf] = []
    for f in dataclasses.fields(cls):
        if "nested" in f.metadata:
            found.extend(leaves(f.metadata["nested"], (*path, f.name)))
        elif f.metadata.get("help"):
            found.append(_Leaf(f, hints[f.name], (*path, f.name)))
    return found


def _cli_type(hint: Any) -> Any:
    """What typer parses for field type `hint`: a variable tuple is a repeatable option."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _cli_type(args[0]) | None
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return list[args[0]]  # type: ignore[valid-type]
    return hint


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _parameter(leaf: _Leaf) -> inspect.Parameter:
    meta = leaf.field.metadata
    help_text = meta["help"] + (" \\[required]" if leaf.required else "")
    default: Any = None if leaf.required else leaf.default
    annotation = _cli_type(leaf.hint)
    if meta.get("parse") and meta.get("repeat"):
        annotation, default = list[str], []
    elif meta.get("parse"):
        annotation = str | None if default is None else str
        if default is not None:
            default = (meta.get("show") or _show)(default)
    elif isinstance(default, tuple):
        default = list(default)
    info = typer.Option(
        default, *meta.get("flags", ()), help=help_text, envvar=meta.get("envvar"),
        show_default=default not in (None, [], ""),
    )  # fmt: skip
    return inspect.Parameter(
        leaf.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
    )


def _flag(leaf: _Leaf) -> str:
    flags = leaf.field.metadata.get("flags") or ()
    return flags[0].split("/")[0] if flags else "--" + leaf.name.replace("_", "-")


def merge(cls: type, explicit: dict[str, Any], toml: dict[str, Any], where: str = "") -> Any:
    """Build `cls` from explicit option values over the TOML dict over the defaults.

    `explicit` holds option values by field name, already in field types; `toml` is the
    config's dict form (the keys config.json has). A key or type error in the TOML names
    the file through `where`.
    """
    try:
        checked_values(cls, toml)
    except CircuitlabError as e:
        raise CircuitlabError(f"{where}{e}") from None
    data = copy.deepcopy(toml)
    for leaf in leaves(cls):
        if leaf.name in explicit:
            _assign(data, cls, leaf, explicit[leaf.name])
        elif leaf.required and not _has(data, cls, leaf):
            file_hint = " or in the --config file" if where else " or in a --config file"
            raise CircuitlabError(f"missing {_flag(leaf)}: give it on the command line{file_hint}")
    return config_from_dict(cls, data)


def _dict_path(cls: type, leaf: _Leaf) -> list[str]:
    """Where `leaf` sits in the dict form: flattened configs contribute no key."""
    keys, owner = [], cls
    for name in leaf.path[:-1]:
        f = next(f for f in dataclasses.fields(owner) if f.name == name)
        if not f.metadata.get("flatten"):
            keys.append(name)
        owner = f.metadata["nested"]
    return [*keys, leaf.name]


def _has(data: dict[str, Any], cls: type, leaf: _Leaf) -> bool:
    *outer, last = _dict_path(cls, leaf)
    for key in outer:
        data = data.get(key, {})
    return last in data


def _assign(data: dict[str, Any], cls: type, leaf: _Leaf, value: Any) -> None:
    *outer, last = _dict_path(cls, leaf)
    for key in outer:
        data = data.setdefault(key, {})
    data[last] = value


def config_options(
    cls: type, *, table: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give the decorated command one option per help-carrying field of `cls`, and
    `--config FILE` (TOML: the `[table]` table if the file has one, else the top level).
    The command receives the merged config as its `config` parameter."""
    options = leaves(cls)
    names = [leaf.name for leaf in options]
    if len(set(names)) != len(names):
        raise ValueError(f"{cls.__name__}: two options named alike in {names}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(fn).parameters
        clash = set(names) & set(own)
        if clash:
            raise ValueError(f"{fn.__name__}: parameters {sorted(clash)} are also fields")
        keyword = inspect.Parameter.KEYWORD_ONLY
        kept = [  # `config`'s own annotation is never evaluated: it may name a lazy import
            p.replace(kind=keyword, annotation=_evaluated(p.annotation, fn))
            for name, p in own.items()
            if name != "config"
        ]
        table_text = f"a \\[{table}] table or the top level of " if table else ""
        generated = [
            inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
            *kept,
            *(_parameter(leaf) for leaf in options),
            inspect.Parameter(
                _FILE,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Path | None,
                default=typer.Option(
                    None,
                    "--config",
                    help=f"TOML file with {cls.__name__} settings ({table_text}the file); "
                    "options given on the command line override it.",
                ),
            ),
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            ctx: typer.Context = kwargs.pop(_CTX)
            path: Path | None = kwargs.pop(_FILE)
            explicit = {}
            for leaf in options:
                value = kwargs.pop(leaf.name)
                source = ctx.get_parameter_source(leaf.name)
                # by name: typer may bring its own copy of click and of this enum
                if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
                    explicit[leaf.name] = _from_cli(leaf, value)
            toml: dict[str, Any] = {}
            if path is not None:
                toml = read_toml(path)
                if table is not None and isinstance(toml.get(table), dict):
                    toml = dict(toml[table])
            where = f"config file {path}: " if path is not None else ""
            return fn(config=merge(cls, explicit, toml, where), **kwargs)

        command.__signature__ = inspect.Signature(generated)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in generated}
        return command

    return decorate


def _evaluated(annotation: Any, fn: Callable[..., Any]) -> Any:
    if isinstance(annotation, str):
        return eval(annotation, fn.__globals__)  # the module's own annotation, as typer would
    return annotation


def _from_cli(leaf: _Leaf, value: Any) -> Any:
    parse = leaf.field.metadata.get("parse")
    if parse is not None and value is not None:
        value = parse(value)
    return check_type(value, leaf.hint, leaf.name)


class LazyGroup(TyperGroup):
    """A system's command group that builds each command when it is first used.

    Building a command reads its config dataclass, and importing the module that defines
    it can cost seconds (torch): `analog taxonomy` must not pay for NSCConfig. The group
    lists every name at once; `lazy_command` registers the builders.
    """

    builders: dict[str, Callable[[], Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.builders = dict(getattr(type(self), "registry", {}))

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.commands, *(n for n in self.builders if n not in self.commands)]

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in self.commands and name in self.builders:
            self.commands[name] = self.builders.pop(name)()
        return super().get_command(ctx, name)


def lazy_app(**settings: Any) -> typer.Typer:
    """A Typer app whose `lazy_command`s are built on first use (see LazyGroup)."""
    group = type("SystemGroup", (LazyGroup,), {"registry": {}})
    app = typer.Typer(cls=group, **settings)
    app.info.cls = group
    return app


def lazy_command(
    app: typer.Typer, name: str, config: str | None = None, *, table: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as command `name` of a `lazy_app`; `config`
    ("module:Class") is imported, and its options generated, only when the command is built."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def build() -> Any:
            callback = fn
            if config is not None:
                module, _, attr = config.partition(":")
                cls = getattr(importlib.import_module(module), attr)
                callback = config_options(cls, table=table)(fn)
            single = typer.Typer(
                add_completion=False,
                pretty_exceptions_enable=app.pretty_exceptions_enable,
                rich_markup_mode=app.rich_markup_mode,
            )
            single.command(name)(callback)
            return typer.main.get_command(single)

        app.info.cls.registry[name] = build  # type: ignore[union-attr]
        return fn

    return decorate
