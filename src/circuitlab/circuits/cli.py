"""`circuitlab circuits`: tasks, model checks, reference circuits, SAE discovery, baselines,
evaluation and robustness sweeps."""

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
    "JSONL), literature and patching reference circuits, the discrete-SAE method (node and "
    "edge) with baselines (attribution patching, HISP, activation patching, random), "
    "evaluation against a reference (ROC AUC, AP, F1) and robustness sweeps.",
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
        None, help="Run directory \\[default: runs/circuits/reference-TASK-MODEL]."
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
    layers: str = typer.Option("", help="Only patch these layers, e.g. 20-29 or 0,5,9 \\[all]."),
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


METHODS_HELP = (
    "Comma-separated: sae, sae-edge, attribution, hisp, activation (exhaustive patching: slow), "
    "random."
)


def _default_out(kind: str, task: str, model: str) -> Path:
    from circuitlab.core.lm import display_name

    name = display_name(None if model == "embedded" else model).replace("/", "_")
    return Path("runs/circuits") / f"{kind}-{Path(task).stem}-{name}"


@app.command()
def discover(
    task: str = typer.Option("ioi", help=TASK_HELP),
    model: str = typer.Option("embedded", help=MODEL_HELP),
    reference: str = typer.Option(
        None,
        help="Score against this circuit: a reference.json, a JSON list of layer.head, or "
        "literature:MODEL:TASK[:VARIANT].",
    ),
    out: Path = typer.Option(None, help="Run directory \\[default: runs/circuits/discover-...]."),
    methods: str = typer.Option("sae,sae-edge,attribution,hisp,random", help=METHODS_HELP),
    num: int = typer.Option(250, help="Prompt pairs (positives and negatives each)."),
    seed: int = typer.Option(0, help="Seed of the SAE (training draw, init) and random ranking."),
    task_seed: int = typer.Option(0, help="Seed of the prompt generator."),
    n_train: int = typer.Option(10, help="SAE training prompts, drawn from the pooled prompts."),
    features: int = typer.Option(200, help="SAE features."),
    l1: float = typer.Option(0.0, help="SAE L1 coefficient [0: 0.05 for docstring, else 0.02]."),
    epochs: int = typer.Option(500, help="SAE full-batch epochs."),
    reduction: str = typer.Option("mean", help="Head output over positions: mean or last."),
    normalised: bool = typer.Option(False, help="Node score |P\\N| / |P u N|."),
    threshold: float = typer.Option(0.5, help="Circuit: heads scoring >= this x top score."),
    patch_num: int = typer.Option(8, help="Prompt pairs for the activation-patching baseline."),
    dtype: str = typer.Option("float32", help="LM weights: float32 or bfloat16."),
    sae_dtype: str = typer.Option("float32", help="SAE matrix products: float32 or bfloat16."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: default; 1 on a busy CPU)."),
) -> None:
    """Find the task's circuit with the SAE method and baselines, on the same prompts.

    Writes OUT/scores.json (per method: score per head, ranking, circuit, timings of
    activation extraction, SAE training and scoring; with --reference also AUC, AP, F1),
    OUT/heatmap.png and OUT/report.md.

    Example: circuitlab circuits discover --task ioi --reference runs/circuits/ref/reference.json
    """
    from circuitlab.circuits.methods import DiscoveryConfig, methods_from_text, run_discover

    config = DiscoveryConfig(
        task=task,
        model=model,
        num=num,
        seed=seed,
        task_seed=task_seed,
        methods=methods_from_text(methods),
        n_train=n_train,
        n_features=features,
        l1=l1,
        epochs=epochs,
        reduction=reduction,
        normalised=normalised,
        threshold=threshold,
        patch_num=patch_num,
        dtype=dtype,
        sae_dtype=sae_dtype,
        threads=threads,
    )
    out = out or _default_out("discover", task, model)
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


def _pairs(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        task, sep, spec = item.partition("=")
        if not sep or not task or not spec:
            raise CircuitlabError(f"bad --reference {item!r}: use TASK=FILE, e.g. ioi=ref.json")
        pairs.append((task, spec))
    return tuple(pairs)


@app.command()
def evaluate(
    reference: list[str] = typer.Option(
        ...,
        help="TASK=REFERENCE, repeatable (REFERENCE: reference.json, JSON list of heads, or "
        "literature:MODEL:TASK).",
    ),
    model: str = typer.Option("embedded", help=MODEL_HELP),
    out: Path = typer.Option(Path("runs/circuits/evaluate"), help="Run directory."),
    methods: str = typer.Option(
        "sae,sae-edge,attribution,hisp,activation,random", help=METHODS_HELP
    ),
    seeds: int = typer.Option(10, help="Seeds (SAE and random; the others are deterministic)."),
    num: int = typer.Option(250, help="Prompt pairs per task."),
    n_train: int = typer.Option(10, help="SAE training prompts."),
    epochs: int = typer.Option(500, help="SAE full-batch epochs."),
    threshold: float = typer.Option(0.5, help="Circuit: heads scoring >= this x top score."),
    reference_threshold: float = typer.Option(
        0.0, help="Re-cut reference.json files at this |relative effect| [0: their own]."
    ),
    patch_num: int = typer.Option(8, help="Prompt pairs for activation patching."),
    dtype: str = typer.Option("float32", help="LM weights: float32 or bfloat16."),
    sae_dtype: str = typer.Option("float32", help="SAE matrix products: float32 or bfloat16."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: default; 1 on a busy CPU)."),
) -> None:
    """Every method on every task, scored against its reference: one table, one ROC plot.

    Writes OUT/results.json, OUT/report.md (the table: method x task -> AUC, AP, F1, wall
    time) and OUT/roc.png. Rerunning the same command resumes.

    Example: circuitlab circuits evaluate --reference ioi=ref-ioi/reference.json
    --reference greater-than=ref-gt/reference.json --seeds 10
    """
    from circuitlab.circuits.evaluate import EvaluateConfig, run_evaluate
    from circuitlab.circuits.methods import methods_from_text

    config = EvaluateConfig(
        references=_pairs(reference),
        model=model,
        methods=methods_from_text(methods),
        seeds=seeds,
        num=num,
        n_train=n_train,
        epochs=epochs,
        threshold=threshold,
        reference_threshold=reference_threshold,
        patch_num=patch_num,
        dtype=dtype,
        sae_dtype=sae_dtype,
        threads=threads,
    )
    results = run_evaluate(config, out)
    table = Table(title="methods against reference circuits (mean +- std over runs)")
    for column in ("task", "method", "runs", "ROC AUC", "AP", "F1", "F1@k", "seconds"):
        table.add_column(column, justify="left" if column in ("task", "method") else "right")
    for r in results["table"]:
        table.add_row(
            r["task"],
            r["method"],
            str(r["runs"]),
            f"{r['auc']:.3f} +- {r['auc_std']:.3f}",
            f"{r['ap']:.3f}",
            f"{r['f1']:.3f}",
            f"{r['f1_at_k']:.3f}",
            f"{r['seconds']:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'report.md'}, {out / 'roc.png'}")


def _numbers(text: str, kind: type) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CircuitlabError(f"bad list {text!r}: use comma-separated numbers") from None


@app.command()
def sweep(
    reference: str = typer.Option(..., help="The circuit to score against (as in discover)."),
    task: str = typer.Option("ioi", help=TASK_HELP),
    model: str = typer.Option("embedded", help=MODEL_HELP),
    out: Path = typer.Option(None, help="Run directory \\[default: runs/circuits/sweep-...]."),
    seeds: int = typer.Option(3, help="Seeds per point."),
    num: int = typer.Option(250, help="Prompt pairs."),
    n_train: str = typer.Option("5,10,25,50,100,250", help="SAE training prompts to try."),
    features: str = typer.Option("50,100,200,400", help="SAE feature counts to try."),
    l1: str = typer.Option("0.005,0.01,0.02,0.05,0.1", help="L1 coefficients to try."),
    reductions: str = typer.Option("mean,last", help="Position reductions to try."),
    epochs: int = typer.Option(500, help="SAE full-batch epochs."),
    dtype: str = typer.Option("float32", help="LM weights: float32 or bfloat16."),
    sae_dtype: str = typer.Option("float32", help="SAE matrix products: float32 or bfloat16."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: default; 1 on a busy CPU)."),
) -> None:
    """Robustness of the SAE method: AUC vs training prompts, features, lambda, reduction.

    One setting varies at a time around the defaults. Writes OUT/results.json, OUT/report.md
    and OUT/sweep.png; rerunning resumes.

    Example: circuitlab circuits sweep --task ioi --reference ref-ioi/reference.json
    """
    from circuitlab.circuits.sweep import SweepConfig, run_sweep

    config = SweepConfig(
        task=task,
        reference=reference,
        model=model,
        num=num,
        seeds=seeds,
        n_train=_numbers(n_train, int),
        n_features=_numbers(features, int),
        l1=_numbers(l1, float),
        reductions=_kinds(reductions),
        epochs=epochs,
        dtype=dtype,
        sae_dtype=sae_dtype,
        threads=threads,
    )
    out = out or _default_out("sweep", task, model)
    results = run_sweep(config, out)
    table = Table(title=f"SAE robustness on {task} (ROC AUC, {seeds} seeds)")
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
