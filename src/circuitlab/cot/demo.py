"""The cot part of `circuitlab demo`: every task at its smallest paper size, both formats."""

from __future__ import annotations

from pathlib import Path

from circuitlab.core.io import read_json
from circuitlab.core.progress import progress_bar
from circuitlab.core.runs import RunDir
from circuitlab.cot.data import BOTH, DataConfig, output_paths, write_dataset
from circuitlab.cot.tasks import TASKS


def run_data_demo(out: str | Path, num: int, seed: int) -> Path:
    """Write the datasets and a markdown report into run directory `out`; return the report.

    A rerun skips datasets whose statistics file already exists.
    """
    run = RunDir.open(out, {"demo": "cot-data", "num": num, "seed": seed})
    rows = []
    for name, task in TASKS.items():
        size = task.paper_sizes[0]
        config = DataConfig(task=name, size=size, format=BOTH, num=num, seed=seed)
        target = run.path / "cot-data" / f"{name}-{size}.jsonl"
        unit = target.stem
        if not run.is_done(unit):
            with progress_bar(f"{name} n={size}", config.num + config.tests) as bar:
                write_dataset(config, target, lambda n: bar.advance(bar.task_ids[0], n))
            run.mark_done(unit)
        rows += [read_json(files["stats"]) for files in output_paths(target, BOTH).values()]
    run.write_results({"cot_data": rows})
    return run.write_report(_report(rows, num, seed))


def _report(rows: list[dict], num: int, seed: int) -> str:
    lines = [
        "# cot: the four datasets (Feng et al. 2023)",
        "",
        f"Made by `make demo` ({num} training examples per dataset, seed {seed}). Each "
        "row is one dataset under `cot-data/` (direct and CoT files hold the same problems); "
        "lengths count tokens of the full sequence without end-of-sequence. For comparison, "
        "the official longest CoT sequences are arithmetic n=4 41, equation n=3 89, LIS n=50 "
        "103, ED n=12 210 tokens, and the official direct max lengths (which count two "
        "special tokens) 19, 46, 54, 31.",
        "",
        "| task | size | format | train | test | max tokens | mean tokens | max steps "
        "| distinct answers | examples/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['size']} | {r['format']} | {r['num_train']} | {r['num_test']} "
            f"| {r['max_tokens']} | {r['mean_tokens']} | {r['max_chain_steps']} "
            f"| {r['distinct_answers']} | {r['examples_per_second']} |"
        )
    return "\n".join(lines) + "\n"
