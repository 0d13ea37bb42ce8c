"""`circuitlab circuits`: tasks, model checks, literature and patching reference circuits."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.circuits.ablation import ABLATIONS
from circuitlab.circuits.tasks import TASKS
from circuitlab.core.errors import CircuitlabError

app = typer.Typer(
    help="Circuit discovery (O'Neill & Bui 2024): tasks (IOI, greater-than, docstring, your "
    "JSONL), per-head outputs and ablations, literature and patching reference circuits. "
    "The SAE method, baselines and evaluation are NOT IMPLEMENTED YET (issue 5).",
    no_args_is_help=True,
)

TASK_HELP = f"One of {', '.join(TASKS)}, or a .jsonl file of prompt pairs (see README)."
MODEL_HELP = "embedded (SmolLM2-135M-Instruct), a .gguf file, a model directory or a hub id."


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _layers(text: str) -> tuple[int, ...]:
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            out.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise CircuitlabError(f"bad --layers {text!r}: use e.g. 20-29 or 0,5,9") from None
    return tuple(out)


@app.command()
def check(
    task: str = typer.Option("ioi", help=TASK_HELP),
    model: str = typer.Option("embedded", help=MODEL_HELP),
    num: int = typer.Option(250, help="Prompt pairs."),
    seed: int = typer.Option(0, help="Seed of the prompt generator."),
    batch_size: int = typer.Option(32, help="Prompts per forward pass."),
    prepend_bos: bool = typer.Option(False, help="Put the tokenizer's BOS token first."),
) -> None:
    """Does the model do the task? Print the task metric on positives and negatives.

    A model that does the task has a clearly positive metric on positives and a much lower one
    on negatives (IOI: logit(IO) - logit(S), about 0 on ABC negatives).

    Example: circuitlab circuits check --task ioi
    """
    from circuitlab.circuits.metrics import score_task
    from circuitlab.circuits.tasks import make_task
    from circuitlab.core.lm import load_lm

    lm = load_lm(model)
    the_task = make_task(task, lm.tokenizer, n=num, seed=seed)
    score = score_task(lm, the_task, batch_size=batch_size, prepend_bos=prepend_bos)
    summary = score.summary()
    table = Table(title=f"{the_task.name} on {lm.name}: {the_task.metric}, {len(the_task)} pairs")
    table.add_column("prompts")
    for column in ("mean", "std", "> 0"):
        table.add_column(column, justify="right")
    for which in ("positives", "negatives"):
        table.add_row(
            which,
            f"{summary[f'{which}_mean']:.3f}",
            f"{summary[f'{which}_std']:.3f}",
            f"{float((getattr(score, which) > 0).float().mean()):.0%}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"gap (positives - negatives) {summary['gap']:.3f}; top-1 answer correct on "
        f"{summary['top1_accuracy']:.0%} of positives"
    )
    console.print(f"[dim]{the_task.description}[/dim]")


@app.command()
def reference(
    task: str = typer.Option("ioi", help=TASK_HELP),
    model: str = typer.Option("embedded", help=MODEL_HELP),
    out: Path = typer.Option(
        None, help="Run directory [default: runs/circuits/reference-TASK-MODEL]."
    ),
    num: int = typer.Option(64, help="Prompt pairs (the effect of a head is averaged over them)."),
    seed: int = typer.Option(0, help="Seed of the prompt generator."),
    ablation: str = typer.Option(
        "mean", help=f"Ablation defining the circuit: {', '.join(ABLATIONS)}."
    ),
    compare: str = typer.Option(
        "", help="More ablations for the sensitivity table, comma-separated (e.g. resample,zero)."
    ),
    threshold: float = typer.Option(
        0.05,
        help="A head is in the circuit if |its effect| >= this share of the clean-corrupted gap.",
    ),
    batch_size: int = typer.Option(16, help="Prompts per pass (stacked once per head of a layer)."),
    prepend_bos: bool = typer.Option(False, help="Put the tokenizer's BOS token first."),
    dtype: str = typer.Option("float32", help="float32, or bfloat16 (faster on CPUs with bf16)."),
    layers: str = typer.Option("", help="Only patch these layers, e.g. 20-29 or 0,5,9 [all]."),
    threads: int = typer.Option(
        0,
        help="Torch CPU threads (0: default). On a CPU shared with other jobs 1 can be "
        "several times faster than 2.",
    ),
) -> None:
    """Patching reference circuit: ablate every head in turn, keep those that move the metric.

    Writes OUT/reference.json (heads, per-head effects for each ablation, settings, a
    sensitivity table over ablation type and threshold), OUT/heatmap.png (layer x head) and
    OUT/report.md. Rerunning the same command resumes an interrupted run.

    Example: circuitlab circuits reference --task ioi --compare resample,zero
    """
    from circuitlab.circuits.reference import ReferenceConfig, run_reference
    from circuitlab.core.lm import display_name

    config = ReferenceConfig(
        task=task,
        model=model,
        num=num,
        seed=seed,
        ablation=ablation,
        compare=_kinds(compare),
        threshold=threshold,
        batch_size=batch_size,
        prepend_bos=prepend_bos,
        dtype=dtype,
        layers=_layers(layers),
        threads=threads,
    )
    if out is None:
        name = display_name(None if model == "embedded" else model).replace("/", "_")
        out = Path("runs/circuits") / f"reference-{Path(task).stem}-{name}"
    ref = run_reference(config, out)
    console = Console()
    table = Table(title="sensitivity: circuit size by ablation and threshold")
    for column in ("ablation", "threshold", "heads", "Jaccard vs default", "default kept"):
        table.add_column(column, justify="right")
    for row in ref["sensitivity"]:
        table.add_row(
            row["ablation"],
            str(row["threshold"]),
            str(row["heads"]),
            f"{row['jaccard_vs_default']:.2f}",
            str(row["default_heads_kept"]),
        )
    console.print(table)
    metric = ref["metric"]
    heads = " ".join(ref["heads"]) or "(none)"
    console.print(
        f"{ref['task']['name']} on {ref['model']}: metric on positives "
        f"{metric['positives_mean']:.3f}, on negatives {metric['negatives_mean']:.3f}"
    )
    console.print(f"circuit ({len(ref['heads'])} heads): {heads}")
    console.print(f"wrote {out / 'reference.json'}, {out / 'heatmap.png'} ({ref['seconds']} s)")


@app.command()
def literature(
    model: str = typer.Option(None, help="Only circuits of this model (gpt2, attn-only-4l)."),
    task: str = typer.Option(None, help="Only circuits of this task."),
) -> None:
    """List the published circuits (GPT-2 small, attn-only-4l) with their variants and sources."""
    from circuitlab.circuits.literature import CIRCUITS, canonical_model

    wanted_model = canonical_model(model) if model else None
    if model and wanted_model is None:
        typer.echo(f"no published circuits for {model}; compute one with `circuits reference`")
        return
    table = Table(title="published head circuits (layer.head)")
    for column in ("model", "task", "variant", "heads", "source"):
        table.add_column(column)
    for c in CIRCUITS:
        if (wanted_model and c.model != wanted_model) or (task and c.task != task):
            continue
        variant = c.variant + (" (default)" if c.default else "")
        table.add_row(
            c.model,
            c.task,
            variant,
            f"{len(c.heads)}: {' '.join(c.names)}",
            f"{c.citation.split('.')[0]}. {c.note}",
        )
    Console().print(table)
