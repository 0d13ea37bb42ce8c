"""`circuitlab analog`: not built yet."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="AnalogSeeker-style domain LM for analog circuit design. NOT IMPLEMENTED YET: corpus, "
    "knowledge nodes and distillation arrive with issue 6, NSC-SFT and evaluation with "
    "issue 7. This group has no commands today.",
    no_args_is_help=True,
)


@app.callback()
def analog() -> None:
    """AnalogSeeker pipeline: not implemented yet (issues 6 and 7)."""
