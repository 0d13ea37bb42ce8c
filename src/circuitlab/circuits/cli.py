"""`circuitlab circuits`: not built yet."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Circuit discovery with discrete SAEs (O'Neill & Bui 2024). NOT IMPLEMENTED YET: "
    "model access, tasks and reference circuits arrive with issue 4, the SAE method, "
    "baselines and evaluation with issue 5. This group has no commands today.",
    no_args_is_help=True,
)


@app.callback()
def circuits() -> None:
    """Circuit discovery with discrete SAEs: not implemented yet (issues 4 and 5)."""
