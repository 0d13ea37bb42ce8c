"""The `circuitlab` command: one sub-command per system, plus `demo`.

Errors a user can cause (`CircuitlabError`) are printed as one line without a traceback
and exit with status 2, like a usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from circuitlab.analog.cli import app as analog_app
from circuitlab.circuits.cli import app as circuits_app
from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.cli import app as cot_app

app = typer.Typer(
    help="circuitlab: chain-of-thought transformers (cot), SAE circuit discovery (circuits) "
    "and analog-design LMs (analog).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cot_app, name="cot")
app.add_typer(circuits_app, name="circuits")
app.add_typer(analog_app, name="analog")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory for the demo's outputs."),
    num: int = typer.Option(10_000, help="Training examples per cot dataset."),
    seed: int = typer.Option(0, help="Seed for everything the demo draws."),
) -> None:
    """Run every part that exists on the embedded defaults and write a report.

    Today that is the cot data suite: all four tasks at their smallest paper size, in direct
    and chain-of-thought form, with statistics. Rerunning skips datasets already written.
    """
    from circuitlab.cot.demo import run_data_demo

    report = run_data_demo(out, num=num, seed=seed)
    typer.echo(f"report: {report}")


def main() -> None:
    try:
        app()
    except CircuitlabError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is kept and a rerun resumes", err=True)
        sys.exit(130)
