"""The `circuitlab` command: one sub-command per system, plus `demo`.

Errors a user can cause (`CircuitlabError`) are printed as one line without a traceback
and exit with status 2, like a usage error.

Each system's sub-app is imported only when its name is on the command line (or for the
top-level help, which lists them all): `circuitlab cot data` must not pay for importing
the model code of `circuits` or `analog`, and start-up is a large part of a short run.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from circuitlab.core.commands import config_options
from circuitlab.core.errors import CircuitlabError
from circuitlab.demo import DemoSettings

# name -> module whose `app` is that system's Typer app, in the order the help lists them
SYSTEMS = {
    "cot": "circuitlab.cot.cli",
    "circuits": "circuitlab.circuits.cli",
    "analog": "circuitlab.analog.cli",
}


class _LazyCommands(MutableMapping[str, Any]):
    """A group's commands, where the systems' sub-apps are built on first access.

    Iterating gives every name (the eager commands, then the systems) without importing
    anything, so listing and "did you mean" suggestions stay cheap.
    """

    def __init__(self, eager: dict[str, Any], lazy: dict[str, Callable[[], Any]]) -> None:
        self._commands = dict(eager)
        self._lazy = {name: load for name, load in lazy.items() if name not in eager}

    def __getitem__(self, name: str) -> Any:
        if name in self._lazy:
            self._commands[name] = self._lazy.pop(name)()
        return self._commands[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._lazy.pop(name, None)
        self._commands[name] = command

    def __delitem__(self, name: str) -> None:
        if self._lazy.pop(name, None) is None:
            del self._commands[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._commands
        yield from self._lazy

    def __len__(self) -> int:
        return len(self._commands) + len(self._lazy)

    def __contains__(self, name: object) -> bool:
        return name in self._commands or name in self._lazy


def _system_command(name: str) -> Any:
    """The click group of system `name`, built exactly as `app.add_typer(sub, name=name)`
    would build it (through a throwaway parent with the top-level app's settings)."""
    parent = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    parent.add_typer(importlib.import_module(SYSTEMS[name]).app, name=name)
    return typer.main.get_group(parent).commands[name]


class _Systems(TyperGroup):
    """The top-level group: `demo` plus one lazily imported sub-app per system."""

    def __init__(self, *, commands: dict[str, Any] | None = None, **attrs: Any) -> None:
        lazy = {name: (lambda name=name: _system_command(name)) for name in SYSTEMS}
        super().__init__(commands=_LazyCommands(dict(commands or {}), lazy), **attrs)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)


app = typer.Typer(
    cls=_Systems,
    help="circuitlab: chain-of-thought transformers (cot), SAE circuit discovery (circuits) "
    "and analog-design LMs (analog).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _systems() -> None:
    # A callback makes typer build a group even while `demo` is the only eager command.
    pass


@app.command()
@config_options(DemoSettings, table="demo")
def demo(
    config: DemoSettings,
    out: Path = typer.Option(Path("runs/demo"), help="Run directory for the demo's outputs."),
    stage: list[str] = typer.Option([], help="Run only these stages (repeatable)."),
) -> None:
    """Run every system on the embedded defaults and write runs/demo/report.html.

    Stages: cot datasets (all four tasks, statistics); the cot demo sweep (arithmetic, CoT
    vs direct, trained from scratch on this CPU); circuits on SmolLM2 (IOI patching reference,
    SAE discovery and baselines); the analog pipeline on a textbook slice (nodes, distilled
    QA, SFT and NSC-SFT with LoRA, MCQ accuracy and drift). Each stage is its own run
    directory under OUT; an interrupted demo resumes at the stage it was in. The report
    (report.html, self-contained, and report.md) opens with the findings per system beside
    the paper's, then the stages' reports.
    """
    from circuitlab.demo import run_demo

    report = run_demo(out, config, only=tuple(stage))
    typer.echo(f"report: {report}")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(
        ...,
        metavar="RUN_DIR...",
        help="Run directories with a report.md, one report section each, in this order.",
    ),
    out: Path | None = typer.Option(
        None, help="HTML file to write (default: FIRST_RUN_DIR/report.html)."
    ),
) -> None:
    """Rebuild one self-contained HTML report (plots embedded) from run directories.

    Also writes the sections as one markdown file next to the HTML (OUT with suffix .md, or
    NAME.combined.md where that would overwrite an input's report.md). A plot a report.md
    links but that is missing is shown as a "missing plot" box and warned about; one that
    leads out of its run directory (../, an absolute path, a symlink out) is never read.
    """
    from circuitlab.core.report import build_report

    built = build_report(run_dirs, out)
    for warning in built.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"report: {built.html}")
    typer.echo(f"markdown: {built.markdown}")


@app.command()
def doctor(
    json_output: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
) -> None:
    """Print versions, device, threads, where the embedded model and caches are, whether
    chromium is present, and free disk: paste this into a bug report."""
    from circuitlab.doctor import report

    rows = report()
    if json_output:
        import json

        typer.echo(json.dumps(dict(rows), indent=2))
        return
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")


def refuse_empty_values(args: list[str]) -> None:
    """No option of circuitlab means anything when empty, and an empty path is worse than
    meaningless: `Path("")` is the current directory, so `--out ""` would write a run into
    whatever folder the shell is in. Refused before any command starts."""
    for i, arg in enumerate(args):
        if arg == "--":
            return
        name, eq, value = arg.partition("=")
        if not name.startswith("--"):
            continue
        if (eq and not value) or (not eq and i + 1 < len(args) and args[i + 1] == ""):
            raise CircuitlabError(
                f"{name} was given an empty value; give one (a path: use . for the current "
                "directory)"
            )


def main() -> None:
    try:
        refuse_empty_values(sys.argv[1:])
        app()
    except CircuitlabError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is kept and a rerun resumes", err=True)
        sys.exit(130)
