"""`circuitlab circuits`: tasks, model checks, reference circuits, SAE discovery, baselines,
evaluation and robustness sweeps."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.circuits.evaluate import EvaluateConfig
from circuitlab.circuits.methods import DiscoveryConfig
from circuitlab.circuits.metrics import CheckConfig
from circuitlab.circuits.reference import ReferenceConfig
from circuitlab.circuits.sweep import SweepConfig
from circuitlab.core.commands import config_options

app = typer.Typer(
    help="Circuit discovery (O'Neill & Bui 2024): tasks (IOI, greater-than, docstring, your "
    "JSONL), literature and patching reference circuits, the discrete-SAE method (node and "
    "edge) with baselines (attribution patching, HISP, activation patching, random), "
    "evaluation against a reference (ROC AUC, AP, F1) and robustness sweeps.",
    no_args_is_help=True,
)

@app.command()
@config_options(CheckConfig, table="check")
def check(config: CheckConfig) -> None:
    """Does the model do the task? Print the task metric on positives and negatives.

    A model that does the task has a clearly positive metric on positives and a much lower one
    on negatives (IOI: logit(IO) - logit(S), about 0 on ABC negatives).

    Example: circuitlab circuits check --task ioi
    """
    from circuitlab.circuits.metrics import score_task
    from circuitlab.circuits.tasks import make_task
    from circuitlab.core.lm import load_lm

    lm = load_lm(config.model)
    the_task = make_task(config.task, lm.tokenizer, n=config.num, seed=config.seed)
    score = score_task(lm, the_task, batch_size=config.batch_size, prepend_bos=config.prepend_bos)
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
@config_options(ReferenceConfig, table="reference")
def reference(
    config: ReferenceConfig,
    out: Path = typer.Option(
        None, help="Run directory \\[default: runs/circuits/reference-TASK-MODEL]."
    ),
) -> None:
    """Patching reference circuit: ablate every head in turn, keep those that move the metric.

    Writes OUT/reference.json (heads, per-head effects for each ablation, settings, a
    sensitivity table over ablation type and threshold), OUT/heatmap.png (layer x head) and
    OUT/report.md. Rerunning the same command resumes an interrupted run.

    Example: circuitlab circuits reference --task ioi --compare resample,zero
    """
    from circuitlab.circuits.reference import run_reference

    out = out or _default_out("reference", config.task, config.model)
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


def _default_out(kind: str, task: str, model: str) -> Path:
    from circuitlab.core.lm import display_name

    name = display_name(None if model == "embedded" else model).replace("/", "_")
    return Path("runs/circuits") / f"{kind}-{Path(task).stem}-{name}"


@app.command()
@config_options(DiscoveryConfig, table="discover")
def discover(
    config: DiscoveryConfig,
    reference: str = typer.Option(
        None,
        help="Score against this circuit: a reference.json, a JSON list of layer.head, or "
        "literature:MODEL:TASK[:VARIANT].",
    ),
    out: Path = typer.Option(None, help="Run directory \\[default: runs/circuits/discover-...]."),
) -> None:
    """Find the task's circuit with the SAE method and baselines, on the same prompts.

    Writes OUT/scores.json (per method: score per head, ranking, circuit, timings of
    activation extraction, SAE training and scoring; with --reference also AUC, AP, F1),
    OUT/heatmap.png and OUT/report.md.

    Example: circuitlab circuits discover --task ioi --reference runs/circuits/ref/reference.json
    """
    from circuitlab.circuits.discover import run_discover

    out = out or _default_out("discover", config.task, config.model)
    results = run_discover(config, out, reference=reference)
    table = Table(title=f"{results['task']['name']} on {results['model']}")
    for column in ("method", "seconds", "circuit", "top heads", "AUC", "AP", "F1"):
        table.add_column(
            column, justify="right" if column not in ("method", "top heads") else "left"
        )
    for name, entry in results["methods"].items():
        ev = entry.get("evaluation", {})
        table.add_row(
            name,
            f"{entry['seconds_total']:.1f}",
            str(len(entry["circuit"])),
            " ".join(entry["ranking"][:8]),
            *(f"{ev[k]:.3f}" if k in ev else "" for k in ("auc", "ap", "f1")),
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'scores.json'}, {out / 'heatmap.png'}, {out / 'report.md'}")


@app.command()
@config_options(EvaluateConfig, table="evaluate")
def evaluate(
    config: EvaluateConfig,
    out: Path = typer.Option(Path("runs/circuits/evaluate"), help="Run directory."),
) -> None:
    """Every method on every task, scored against its reference: one table, one ROC plot.

    Writes OUT/results.json, OUT/report.md (the table: method x task -> AUC, AP, F1, wall
    time) and OUT/roc.png. Rerunning the same command resumes.

    Example: circuitlab circuits evaluate --reference ioi=ref-ioi/reference.json
    --reference greater-than=ref-gt/reference.json --seeds 10
    """
    from circuitlab.circuits.evaluate import interval, run_evaluate

    results = run_evaluate(config, out)
    table = Table(
        title="methods against reference circuits (mean +- std over runs [95% interval, "
        "bootstrap over heads])"
    )
    for column in ("task", "method", "runs", "ROC AUC", "AP", "F1", "F1@k", "seconds"):
        table.add_column(column, justify="left" if column in ("task", "method") else "right")
    for r in results["table"]:
        table.add_row(
            r["task"],
            r["method"],
            str(r["runs"]),
            f"{r['auc']:.3f} +- {r['auc_std']:.3f}{interval(r, 'auc')}",
            f"{r['ap']:.3f}{interval(r, 'ap')}",
            f"{r['f1']:.3f}",
            f"{r['f1_at_k']:.3f}",
            f"{r['seconds']:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'report.md'}, {out / 'roc.png'}")


@app.command()
@config_options(SweepConfig, table="sweep")
def sweep(
    config: SweepConfig,
    out: Path = typer.Option(None, help="Run directory \\[default: runs/circuits/sweep-...]."),
) -> None:
    """Robustness of the SAE method: AUC vs training prompts, features, lambda, reduction.

    One setting varies at a time around the defaults. Writes OUT/results.json, OUT/report.md
    and OUT/sweep.png; rerunning resumes.

    Example: circuitlab circuits sweep --task ioi --reference ref-ioi/reference.json
    """
    from circuitlab.circuits.sweep import run_sweep

    out = out or _default_out("sweep", config.task, config.model)
    results = run_sweep(config, out)
    table = Table(title=f"SAE robustness on {config.task} (ROC AUC, {config.seeds} seeds)")
    for column in ("setting", "value", "node AUC", "edge AUC", "seconds"):
        table.add_column(column, justify="right")
    for r in results["rows"]:
        table.add_row(
            r["setting"],
            str(r["value"]),
            f"{r['node']:.3f} +- {r['node_std']:.3f}",
            f"{r['edge']:.3f} +- {r['edge_std']:.3f}",
            f"{r['seconds']:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'report.md'}, {out / 'sweep.png'}")
