"""`circuitlab cot`: data generation (training and evaluation arrive with issue 3)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.core.progress import progress_bar
from circuitlab.cot.data import DataConfig, output_paths, write_dataset
from circuitlab.cot.tasks import TASKS

app = typer.Typer(
    help="Chain of thought vs direct answers (Feng et al. 2023): generate the arithmetic, "
    "linear-equation, LIS and edit-distance datasets in the official token formats.",
    no_args_is_help=True,
)


@app.command()
def data(
    task: str = typer.Option(..., help=f"One of: {', '.join(TASKS)}."),
    size: int = typer.Option(
        ...,
        help="Problem size: operators (arithmetic), variables (equation), sequence length "
        "(lis), first-string length (ed). Paper: 4-6, 3-5, 50/80/100, 12/16/20.",
    ),
    format: str = typer.Option(
        "cot",
        help="direct (question -> answer), cot (with chain), or both (the same draw, written "
        "as OUT.direct.jsonl and OUT.cot.jsonl).",
    ),
    num: int = typer.Option(10_000, help="Training examples (the paper uses 1e6)."),
    test_num: int | None = typer.Option(
        None, help="Test examples, never sharing a question with training [default: num/10]."
    ),
    seed: int = typer.Option(0, help="Same seed, same files."),
    p: int = typer.Option(11, help="Prime modulus for arithmetic and equation."),
    out: Path = typer.Option(..., help="Training JSONL; test and stats files go beside it."),
) -> None:
    """Generate a deduplicated train/test split in the official format, with statistics.

    Writes OUT (train), OUT.test.jsonl and OUT.stats.json (max length in tokens, answer
    distribution, ...); with --format both, OUT.direct.* and OUT.cot.* of the same draw.
    Each line holds task, size, format, split, question, chain (list of steps; empty for
    direct), answer and text (the full official sequence).

    Example: circuitlab cot data --task arithmetic --size 4 --num 100000 --out data/a4.jsonl
    """
    config = DataConfig(
        task=task, size=size, format=format, num=num, test_num=test_num, seed=seed, p=p
    )
    with progress_bar(f"{task} n={size} {format}", config.num + config.tests) as bar:
        stats = write_dataset(config, out, lambda n: bar.advance(bar.task_ids[0], n))
    table = Table(title=f"{task} size {size}")
    table.add_column("statistic")
    for fmt in stats:
        table.add_column(fmt, justify="right")
    for key in (
        "num_train",
        "num_test",
        "duplicates_dropped",
        "vocab_size",
        "max_tokens",
        "mean_tokens",
        "max_chain_steps",
        "distinct_answers",
        "examples_per_second",
    ):
        table.add_row(key, *(str(s[key]) for s in stats.values()))
    console = Console(stderr=True)
    console.print(table)
    for files in output_paths(out, format).values():
        console.print(f"wrote {files['train']}, {files['test']}, {files['stats']}")
