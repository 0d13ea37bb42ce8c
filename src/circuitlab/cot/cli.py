"""`circuitlab cot`: data generation, training, evaluation and the direct-vs-CoT sweep.

torch and the model code are imported inside the commands that need them, so `cot data`
starts as fast as a plain numpy script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.core.commands import config_options
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.progress import progress_bar
from circuitlab.cot.config import FRESH_PROBLEMS, SweepSettings, TrainConfig
from circuitlab.cot.data import DataConfig, output_paths, write_dataset

app = typer.Typer(
    help="Chain of thought vs direct answers (Feng et al. 2023): generate the arithmetic, "
    "linear-equation, LIS and edit-distance datasets in the official token formats, train "
    "small transformers from scratch on them, and sweep sizes and depths to see direct "
    "answers fail where chains of thought succeed.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # reflow docstring paragraphs instead of keeping line breaks
)


@app.command()
@config_options(DataConfig, table="data")
def data(
    config: DataConfig,
    out: Path = typer.Option(..., help="Training JSONL; test and stats files go beside it."),
) -> None:
    """Generate a deduplicated train/test split in the official format, with statistics.

    Writes OUT (train), OUT.test.jsonl and OUT.stats.json (max length in tokens, answer
    distribution, ...); with --format both, OUT.direct.* and OUT.cot.* of the same draw.
    Each line holds task, size, format, split, question, chain (list of steps; empty for
    direct), answer and text (the full official sequence).

    Example: circuitlab cot data --task arithmetic --size 4 --num 100000 --out data/a4.jsonl
    """
    task, size, format = config.task, config.size, config.format
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


@app.command()
@config_options(TrainConfig, table="train")
def train(
    config: TrainConfig,
    out: Path = typer.Option(
        ..., help="Run directory (config, metrics.jsonl, checkpoints, results)."
    ),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
) -> None:
    """Train a GPT from scratch on one task/size/format, then evaluate it on the test split.

    Loss covers only what follows the question (chain, answer, end-of-sequence). Batches
    group sequences of similar length, so little compute goes to padding. Checkpoints
    (safetensors + optimizer and RNG state) are written every `checkpoint_every` steps;
    after a kill, the same command with --resume ends in exactly the state an uninterrupted
    run reaches. Every field of TrainConfig (dropout, positions, warmup, schedule, amp,
    mix_smaller, eval_every, ...) is an option and can be set in a --config TOML file.

    Several GPUs: torchrun --nproc_per_node 4 -m circuitlab cot train ... (or accelerate
    launch) runs data-parallel without code changes (write --train-num there, not --num).

    Example: circuitlab cot train --task arithmetic --size 3 --layers 3 --d-model 128
    --lr 1e-3 --epochs 6 --num 30000 --out runs/ar3-cot
    """
    from circuitlab.cot.train import train as run_training

    results = run_training(config, out, resume=resume)
    if results:  # data-parallel ranks other than 0 return nothing to report
        _print_eval(results, out)


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="A run directory made by `cot train`."),
    test_num: int | None = typer.Option(
        None, help="Evaluate on this many fresh test problems instead of the run's test split."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    size: int | None = typer.Option(
        None,
        help="Evaluate on fresh problems of this size instead (length generalisation: "
        "larger than trained needs positions sinusoidal or alibi); --test-num sets how "
        f"many \\[default: {FRESH_PROBLEMS}].",
    ),
    samples: Path | None = typer.Option(
        None,
        help="Also write every generation here as JSONL (question, generated text, steps, "
        "parsed answer, reference, verdicts, first wrong step), in the data files' token "
        "format, so another checker can re-score the run.",
    ),
) -> None:
    """Greedy-decode the test questions with the run's latest weights and score them.

    Prints final-answer accuracy (the paper's metric), the official code's metric for the
    task (the answer for arithmetic and equation CoT, the whole continuation for LIS, ED
    and direct models) and, for CoT, chain accuracy (every step checked by the task's
    verifier) and where chains first go wrong. Writes eval.json into the run directory
    (eval-sizeM.json with --size M).
    """
    from circuitlab.core.io import atomic_write_text
    from circuitlab.cot.rescore import rescore

    if samples is not None and not samples.parent.is_dir():
        raise CircuitlabError(f"--samples {samples}: no directory {samples.parent}")
    records: list[dict[str, Any]] = []
    payload = rescore(run, test_num=test_num, size=size, device=device, samples=records)
    if samples is not None:
        atomic_write_text(samples, "".join(json.dumps(r) + "\n" for r in records))
    _print_eval(payload, run)


def _print_eval(results: dict[str, Any], out: Path) -> None:
    console = Console()
    table = Table(title=f"{results['task']} n={results['size']} {results['format']} "
                  f"({results['layers']} layers)")  # fmt: skip
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("test examples", str(results["examples"]))
    table.add_row("final-answer accuracy", f"{results['answer_accuracy']:.4f}")
    if "official_accuracy" in results:  # runs evaluated before it existed lack it
        name = f"official metric ({results['official_metric']})"
        table.add_row(name, f"{results['official_accuracy']:.4f}")
    if results["format"] == "cot":
        table.add_row("chain accuracy (verified)", f"{results['chain_accuracy']:.4f}")
        table.add_row("right answer, wrong chain", str(results["right_answer_wrong_chain"]))
        errors = results.get("first_error") or {}
        if errors:
            table.add_row("first wrong step", ", ".join(f"{k}: {v}" for k, v in errors.items()))
    console.print(table)
    console.print(f"run directory: {out}")


@app.command()
@config_options(SweepSettings, table="sweep")
def sweep(
    config: SweepSettings,
    out: Path = typer.Option(..., help="Sweep directory: one run per point under points/."),
) -> None:
    """Reproduce the paper's figure: tasks x sizes x {CoT, direct at several depths} x seeds.

    Writes results.json, results.csv, accuracy_vs_size.png and report.md into OUT.
    Interrupted? Run the same command again: finished points are skipped and the running
    one resumes from its checkpoint.

    Example: circuitlab cot sweep --profile quick --out runs/cot-quick
    """
    from circuitlab.cot.sweep import get_profile, run_sweep

    summary = run_sweep(
        get_profile(config.profile),
        out,
        tasks=config.tasks,
        executor=config.executor,
        device=config.device,
        workers=config.workers,
        ray_address=config.ray_address,
    )
    table = Table(title=f"cot sweep ({config.profile}): final-answer accuracy")
    for col in ("task", "size", "variant", "accuracy", "chain acc."):
        table.add_column(col, justify="right" if col not in ("task", "variant") else "left")
    for row in summary["summary"]:
        table.add_row(row["task"], str(row["size"]), row["variant"],
                      f"{row['answer_accuracy']:.3f}", f"{row['chain_accuracy']:.3f}")  # fmt: skip
    Console().print(table)
    Console().print(f"wrote {out}/results.json, results.csv, accuracy_vs_size.png, report.md")
