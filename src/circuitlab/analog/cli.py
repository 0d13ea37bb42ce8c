"""`circuitlab analog`: corpus -> knowledge nodes -> multi-agent QA distillation ->
NSC-SFT fine-tuning -> multiple-choice evaluation, and `run` for all of it end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.core.config import config_from_dict, load_config, read_toml
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.progress import progress_bar

app = typer.Typer(
    help="AnalogSeeker (Chen et al. 2025) data pipeline: a textbook corpus becomes granular "
    "knowledge nodes tagged with an analog-design taxonomy, which cooperating LLM agents "
    "(question designer, solver, reviewer) distil into question / reasoning / answer data. "
    "The data are fine-tuned with neighborhood self-constrained SFT (cross-entropy plus "
    "lambda times the KL to the original model; full or LoRA) and evaluated on "
    "multiple-choice questions and on drift from the original model on general text. "
    "Offline by default (embedded SmolLM2-135M); at scale, any OpenAI-compatible server "
    "and accelerate on GPUs.",
    no_args_is_help=True,
)
console = Console(stderr=True)

CORPUS_HELP = (
    "Folder of .txt/.md/.html/.pdf/.sml documents \\[default: the shipped textbook slice]."
)


def _corpus(corpus: Path | None) -> Path:
    from circuitlab.analog.corpus import SHIPPED

    return corpus if corpus is not None else SHIPPED


def _nodes_config(
    taxonomy: Path | None, min_words: int, max_words: int, near_duplicate: float
) -> Any:
    from circuitlab.analog.corpus import CorpusConfig
    from circuitlab.analog.nodes import NodesConfig

    return NodesConfig(
        corpus=CorpusConfig(near_duplicate=near_duplicate),
        min_words=min_words,
        max_words=max_words,
        taxonomy=str(taxonomy.resolve()) if taxonomy else None,
    )


def _build_nodes(corpus: Path, out: Path, config: Any) -> dict[str, Any]:
    from circuitlab.analog.corpus import list_files
    from circuitlab.analog.nodes import run_nodes

    files, _ = list_files(corpus, config.corpus)
    with progress_bar("reading corpus", len(files)) as bar:
        return run_nodes(corpus, out, config, on_file=lambda _: bar.advance(bar.task_ids[0], 1))


def _print_nodes_summary(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"knowledge nodes ({summary['tagged_by']} tags)")
    table.add_column("branch")
    table.add_column("nodes", justify="right")
    table.add_column("leaves")
    for branch, info in summary["coverage"].items():
        leaves = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in info.get("leaves", {}).items())
        table.add_row(f"{branch}: {info['name']}", str(info["count"]), leaves)
    console.print(table)
    console.print(
        f"{summary['documents']} documents, {summary['sections']} sections, "
        f"{summary['nodes']} nodes ({summary['node_kinds']}), "
        f"{summary['exact_duplicates_dropped']} exact + {summary['near_duplicates_dropped']} "
        f"near-duplicate paragraphs dropped, {summary['nodes_per_second']} nodes/s"
    )
    for skipped in summary["skipped"]:
        console.print(f"[yellow]skipped {skipped['file']}: {skipped['reason']}[/yellow]")
    console.print(f"wrote {out / 'nodes.jsonl'} and {out / 'nodes_summary.json'}")


@app.command()
def nodes(
    corpus: Path | None = typer.Option(None, help=CORPUS_HELP),
    out: Path = typer.Option(..., help="Run directory for nodes.jsonl and the summary."),
    taxonomy: Path | None = typer.Option(
        None, help="Taxonomy TOML \\[default: the shipped analog-design taxonomy]."
    ),
    min_words: int = typer.Option(20, help="Shortest node, in words."),
    max_words: int = typer.Option(150, help="Longest prose node, in words."),
    near_duplicate: float = typer.Option(
        0.85, help="MinHash Jaccard similarity at which a paragraph counts as a repeat."
    ),
) -> None:
    """Ingest a corpus and decompose it into tagged learning nodes, with coverage per branch.

    Writes OUT/nodes.jsonl (id, kind, concept, text, provenance: file / section path /
    span in the cleaned document / source span, tags), sections.jsonl, documents.jsonl
    (the cleaned texts the spans point into), duplicates.jsonl and nodes_summary.json
    (skipped files with reasons, duplicates dropped, coverage per taxonomy branch).

    Example: circuitlab analog nodes --out runs/analog-nodes
    """
    config = _nodes_config(taxonomy, min_words, max_words, near_duplicate)
    summary = _build_nodes(_corpus(corpus), out, config)
    _print_nodes_summary(summary, out)


@app.command("taxonomy")
def show_taxonomy(
    taxonomy: Path | None = typer.Option(None, help="Taxonomy TOML \\[default: shipped]."),
) -> None:
    """Print the domain knowledge framework (copy data/taxonomy.toml to edit it)."""
    from circuitlab.analog.taxonomy import load_taxonomy

    loaded = load_taxonomy(taxonomy)
    for branch in loaded.branches:
        indent = "  " * branch.id.count(".")
        typer.echo(f"{indent}{branch.id}: {branch.name}")
    typer.echo(f"({loaded.source})")


@app.command()
def distill(
    corpus: Path | None = typer.Option(None, help=CORPUS_HELP + " Ignored with --nodes."),
    nodes_file: Path | None = typer.Option(
        None, "--nodes", help="Use this nodes.jsonl instead of building nodes from --corpus."
    ),
    out: Path = typer.Option(..., help="Run directory (a rerun resumes it)."),
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with a \\[distill] table of DistillConfig settings."
    ),
    backend: str | None = typer.Option(None, help="embedded (default) or openai."),
    base_url: str | None = typer.Option(
        None,
        envvar="CIRCUITLAB_LLM_BASE_URL",
        help="OpenAI-compatible server, e.g. "
        "http://localhost:8000/v1 (env CIRCUITLAB_LLM_BASE_URL).",
    ),
    model: str | None = typer.Option(
        None,
        envvar="CIRCUITLAB_LLM_MODEL",
        help="Served model name (openai), or a .gguf / "
        "model dir for the embedded backend (env CIRCUITLAB_LLM_MODEL).",
    ),
    api_key_env: str | None = typer.Option(
        None,
        help="Environment variable holding the API key \\[default: OPENAI_API_KEY]; "
        "the key is never written anywhere.",
    ),
    concurrency: int | None = typer.Option(None, help="HTTP requests in flight [8]."),
    max_nodes: int | None = typer.Option(None, help="Distil at most this many nodes \\[all]."),
    batch_size: int | None = typer.Option(None, help="Nodes per batch [8]."),
    question_tokens: int | None = typer.Option(None, help="Token limit, designer [64]."),
    answer_tokens: int | None = typer.Option(None, help="Token limit, solver reasoning [160]."),
    review_tokens: int | None = typer.Option(None, help="Token limit, reviewer [48]."),
    max_attempts: int | None = typer.Option(None, help="Tries per malformed reply [2]."),
    max_revisions: int | None = typer.Option(None, help="Revise rounds per node [1]."),
    threads: int | None = typer.Option(None, help="Embedded: torch threads [1]; 0: default."),
    seed: int | None = typer.Option(None, help="Seed for node selection and sampling [0]."),
    taxonomy: Path | None = typer.Option(None, help="Taxonomy TOML for --corpus nodes."),
) -> None:
    """Distil knowledge nodes into QA pairs with reasoning, using three cooperating agents.

    Builds nodes from --corpus into OUT/nodes/ (or reads --nodes), then runs the question
    designer, solver and reviewer on each node. Writes OUT/qa.jsonl (question, reasoning,
    answer, prompt/response in <think>/<answer> form, verdict, node id, provenance, tags,
    model per part), OUT/failures.jsonl and OUT/results.json (acceptance rate, failures by
    cause, coverage per branch). LLM responses are cached in OUT/llm-cache/: a killed run
    resumes where it stopped.

    Example: circuitlab analog distill --max-nodes 8 --out runs/analog-qa
    Example: circuitlab analog distill --backend openai --base-url http://gpu:8000/v1
    --model Qwen/Qwen2.5-32B-Instruct --concurrency 32 --answer-tokens 1024 --out runs/qa
    """
    from circuitlab.analog.distill import DistillConfig
    from circuitlab.analog.distill import distill as run_distill

    overrides = {
        "backend": backend,
        "base_url": base_url,
        "model": model,
        "api_key_env": api_key_env,
        "concurrency": concurrency,
        "max_nodes": max_nodes,
        "batch_size": batch_size,
        "question_tokens": question_tokens,
        "answer_tokens": answer_tokens,
        "review_tokens": review_tokens,
        "max_attempts": max_attempts,
        "max_revisions": max_revisions,
        "threads": threads,
        "seed": seed,
    }
    base = load_config(DistillConfig, config_file, "distill") if config_file else DistillConfig()
    values = dataclasses.asdict(base)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = config_from_dict(DistillConfig, values)
    if nodes_file is None:
        nodes_config = _nodes_config(taxonomy, 20, 150, 0.85)
        _build_nodes(_corpus(corpus), out / "nodes", nodes_config)
        nodes_file = out / "nodes" / "nodes.jsonl"
    with progress_bar("distilling", 0) as bar:
        task = bar.task_ids[0]

        def update(counts: dict[str, int]) -> None:
            bar.update(
                task,
                total=counts["total"],
                completed=counts["done"],
                description=f"accepted {counts['accept']} revise {counts['revise']} "
                f"rejected {counts['reject']} failed {counts['failed']}",
            )

        summary = run_distill(nodes_file, out, config, on_batch=update)
    _print_distill_summary(summary, out)


def _print_distill_summary(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"distillation with {summary['model']} ({summary['backend']})")
    for column in ("branch", "nodes", "qa", "accepted", "failed"):
        table.add_column(column, justify="left" if column == "branch" else "right")
    for branch, counts in summary["coverage"].items():
        table.add_row(
            branch, *(str(counts.get(k, 0)) for k in ("nodes", "qa", "accepted", "failed"))
        )
    console.print(table)
    rate = summary["acceptance_rate"]
    console.print(
        f"{summary['nodes_processed']}/{summary['nodes_selected']} nodes: "
        f"{summary['accepted']} accepted, {summary['revise']} still to revise, "
        f"{summary['rejected']} rejected, {summary['failed']} failed "
        f"(acceptance rate {rate if rate is None else f'{rate:.1%}'})"
    )
    if summary["failures_by_cause"]:
        causes = ", ".join(f"{k} {v}" for k, v in summary["failures_by_cause"].items())
        console.print(f"failures by cause: {causes}")
    session = summary["session"]
    console.print(
        f"this session: {session['nodes']} nodes in {session['seconds']} s "
        f"({session['records_per_minute']} records/min), cache {session['cache_hits']} hits / "
        f"{session['cache_misses']} misses"
    )
    console.print(f"wrote {out / 'qa.jsonl'} and {out / 'results.json'}")


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv(text) or ())
    except ValueError:
        raise CircuitlabError(f"{option} {text!r}: give comma-separated numbers") from None


@app.command()
def train(
    data: Path | None = typer.Option(
        None, help="QA JSONL: prompt/response, or question/answer\\[/reasoning] per line."
    ),
    model: str | None = typer.Option(
        None, help="Model to fine-tune: embedded (default), a .gguf, a model dir or a hub id."
    ),
    out: Path = typer.Option(..., help="Run directory (a rerun resumes from its checkpoint)."),
    kl_lambda: float | None = typer.Option(
        None, "--lambda", help="Weight of the KL to the original model [0.1]; 0: plain SFT."
    ),
    lora: bool | None = typer.Option(None, "--lora/--full", help="LoRA adapters or all weights."),
    reference: str | None = typer.Option(
        None,
        help="live (second forward pass), cached (top-k once, before training) or hidden "
        "(the last hidden state once, then only the frozen LM head each step; exact) \\[live].",
    ),
    top_k: int | None = typer.Option(None, help="Cached reference: tokens kept per position [64]."),
    direction: str | None = typer.Option(
        None, help="KL direction: 'model||reference' (paper) or 'reference||model'."
    ),
    kl_tokens: str | None = typer.Option(None, help="KL on 'response' tokens (paper) or 'all'."),
    max_length: int | None = typer.Option(None, help="Tokens per example [1024]."),
    batch_size: int | None = typer.Option(None, help="Examples per micro-batch [4]."),
    grad_accum: int | None = typer.Option(None, help="Micro-batches per optimizer step [1]."),
    epochs: int | None = typer.Option(None, help="Passes over the data [1]."),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps \\[all]."),
    lr: float | None = typer.Option(None, help="Peak learning rate [1e-5 full, 2e-4 LoRA]."),
    lora_r: int | None = typer.Option(None, help="LoRA rank [8]."),
    lora_layers: int | None = typer.Option(None, help="LoRA on the top N layers only [0: all]."),
    verdicts: str | None = typer.Option(
        None, help="Keep records with these reviewer verdicts, comma-separated \\[accept]; '' all."
    ),
    save_every: int | None = typer.Option(None, help="Checkpoint every N steps [50]."),
    mixed_precision: str | None = typer.Option(None, help="no, bf16 or fp16 \\[no]."),
    dtype: str | None = typer.Option(
        None, help="Load the weights as float32, bfloat16 or float16 \\[float32]."
    ),
    threads: int | None = typer.Option(None, help="torch CPU threads [0: torch default]."),
    seed: int | None = typer.Option(None, help="Seed for data order [0]."),
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with a \\[train] table of NSCConfig settings."
    ),
) -> None:
    """Fine-tune with neighborhood self-constrained SFT (NSC-SFT) on QA-with-reasoning data.

    Loss: cross-entropy on the answer tokens + lambda * per-token KL(model || original)
    over the full vocabulary (see analog/nsc_loss.py for the form and its source).
    Writes OUT/metrics.jsonl (ce and kl separately), OUT/checkpoints/ and OUT/model/
    (safetensors; a LoRA adapter or a full model) and OUT/results.json.
    Step cost over plain SFT (benchmarks/bench_nsc_sft.py, CPU): --reference live about
    1.5x with LoRA on every layer (a whole extra forward pass), 1.25x with --lora-layers 4,
    1.35x --full; hidden 1.05-1.15x and exact; cached about 1.03x but its KL a lower bound.
    Several GPUs: accelerate launch -m circuitlab analog train ... (DDP/FSDP/DeepSpeed);
    a large model: --dtype bfloat16 (with FSDP/DeepSpeed and --mixed-precision bf16 the
    optimizer still updates float32 master weights).

    Example: circuitlab analog train --data runs/analog-qa/qa.jsonl --lambda 0.1 --lora
    --out runs/nsc
    """
    from circuitlab.analog.nsc_sft import NSCConfig, kl_summary
    from circuitlab.analog.nsc_sft import train as run_train

    values = read_toml(config_file, "train") if config_file else {}
    overrides = {
        "data": str(data) if data is not None else None,
        "model": model,
        "kl_lambda": kl_lambda,
        "lora": lora,
        "reference": reference,
        "top_k": top_k,
        "kl_direction": direction,
        "kl_tokens": kl_tokens,
        "max_length": max_length,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "epochs": epochs,
        "max_steps": max_steps,
        "lr": lr,
        "lora_r": lora_r,
        "lora_layers": lora_layers,
        "verdicts": _csv(verdicts),
        "save_every": save_every,
        "mixed_precision": mixed_precision,
        "dtype": dtype,
        "threads": threads,
        "seed": seed,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data" not in values:
        raise CircuitlabError("give the training data: --data qa.jsonl")
    config = config_from_dict(NSCConfig, values)
    result = run_train(config, out)
    console.print(
        f"{result['steps']}/{result['total_steps']} steps on {result['examples']} examples "
        f"({result['filtered_by_verdict']} filtered by verdict, {result['truncated']} "
        f"truncated): CE {result['first_ce']:.4f} -> {result['final_ce']:.4f}, "
        f"{kl_summary(result, 5)} (lambda {result['kl_lambda']:g}, reference "
        f"{result['reference']}), {result['mean_step_seconds']} s/step"
    )
    console.print(f"wrote {out / 'model'} and {out / 'results.json'}")


@app.command("eval")
def evaluate(
    model: str = typer.Option(
        "embedded", help="A model spec, or an `analog train` run directory (or its model/)."
    ),
    mcq: Path | None = typer.Option(
        None,
        help="Multiple-choice JSONL (question, options, answer letter, optional "
        "subfield) \\[default: the shipped 60-question analog probe].",
    ),
    mode: str = typer.Option("loglik", help="loglik (score options) or generate (parse a letter)."),
    scoring: str = typer.Option("option", help="loglik: score option text or letter."),
    normalize: str = typer.Option("mean", help="Option score: mean or sum of token log-probs."),
    batch_size: int = typer.Option(16, help="Questions per batch."),
    limit: int | None = typer.Option(None, help="Evaluate N questions spread over the file."),
    base: str | None = typer.Option(
        None, help="Original model for the drift of a full fine-tune \\[from the run]."
    ),
    probe: Path | None = typer.Option(None, help="General-domain text \\[shipped probe]."),
    drift: bool = typer.Option(True, help="Measure drift on general text."),
    out: Path | None = typer.Option(None, help="Write the full results (JSON) here."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    dtype: str = typer.Option(
        "float32", help="Load the weights as float32, bfloat16 or float16 (half the memory)."
    ),
    threads: int = typer.Option(0, help="torch CPU threads [0: torch default]."),
) -> None:
    """Multiple-choice accuracy (overall, per subfield, Wilson 95% CI) and general-text drift.

    Example: circuitlab analog eval --model runs/nsc --mcq amsbench_tqa.jsonl
    Example: circuitlab analog eval --model runs/nsc-32b --device cuda --dtype bfloat16
    --mcq amsbench_tqa.jsonl
    """
    from circuitlab.analog.evaluate import evaluate_model
    from circuitlab.analog.mcq import MCQConfig, load_mcq
    from circuitlab.core.devices import pick_device
    from circuitlab.core.lm import torch_dtype
    from circuitlab.core.threads import torch_threads

    torch_dtype(dtype)  # a bad name or device fails before the questions are read
    where = pick_device(device)

    config = MCQConfig(
        mode=mode, scoring=scoring, normalize=normalize, batch_size=batch_size, limit=limit
    )
    count = len(load_mcq(mcq))
    with torch_threads(threads), progress_bar("questions", min(count, limit or count)) as bar:
        result = evaluate_model(
            model,
            mcq=mcq,
            config=config,
            probe=probe,
            base=base,
            drift=drift,
            out=out,
            on_batch=lambda n: bar.advance(bar.task_ids[0], n),
            dtype=dtype,
            device=where,
        )
    _print_eval(result)
    if out is not None:
        console.print(f"wrote {out}")


def _print_eval(result: dict[str, Any]) -> None:
    m = result["mcq"]
    table = Table(title=f"{result['model']}: {m['mode']} ({m['scoring']})")
    for column in ("subfield", "n", "accuracy", "95% CI"):
        table.add_column(column, justify="left" if column == "subfield" else "right")
    for name, block in [*m["per_subfield"].items(), ("all", m)]:
        low, high = block["ci95"]
        table.add_row(name, str(block["n"]), f"{block['accuracy']:.3f}", f"{low:.2f}-{high:.2f}")
    console.print(table)
    extra = f", mean margin {m['mean_margin']:+.3f}" if m.get("mean_margin") is not None else ""
    console.print(f"{m['questions_per_second']} questions/s, {m['unparsed']} unparsed{extra}")
    if "drift" in result:
        d = result["drift"]
        console.print(
            f"general text ({d['tokens']} tokens): KL to original {d['kl']:.5f}/token "
            f"(against {d['against']}), perplexity {d['perplexity']:.2f} "
            f"(original {d['reference_perplexity']:.2f})"
        )


@app.command("run")
def run_all(
    out: Path = typer.Option(Path("runs/analog"), help="Run directory (a rerun resumes)."),
    max_nodes: int | None = typer.Option(None, help="Nodes to distil [8]."),
    lambdas: str | None = typer.Option(None, help="Comma-separated lambdas [0,0.1,1]."),
    steps: int | None = typer.Option(None, help="Training steps per lambda [8]."),
    reference: str | None = typer.Option(None, help="live, cached or hidden \\[cached]."),
    mcq: Path | None = typer.Option(None, help="MCQ JSONL \\[shipped analog probe]."),
    mcq_limit: int | None = typer.Option(None, help="Evaluate N questions \\[all]."),
    threads: int | None = typer.Option(None, help="torch CPU threads [2]."),
    seed: int | None = typer.Option(None, help="Seed [0]."),
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with a \\[run] table of PipelineConfig settings."
    ),
) -> None:
    """Textbook slice -> nodes -> distillation -> LoRA NSC-SFT per lambda -> evaluation of
    base vs SFT vs NSC-SFT -> OUT/report.md with the trade-off plot (OUT/tradeoff.png).

    The default takes about 3 minutes on an idle 2-core CPU with the embedded 135M model: it
    shows the mechanics and the drift trade-off, not the paper's accuracy gains.

    Example: circuitlab analog run --out runs/analog
    """
    parsed = None if lambdas is None else _floats(lambdas, "--lambdas")  # before slow imports
    from circuitlab.analog.pipeline import PipelineConfig, run_pipeline

    values = read_toml(config_file, "run") if config_file else {}
    overrides = {
        "max_nodes": max_nodes,
        "lambdas": parsed,
        "steps": steps,
        "reference": reference,
        "mcq": str(mcq) if mcq is not None else None,
        "mcq_limit": mcq_limit,
        "threads": threads,
        "seed": seed,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = config_from_dict(PipelineConfig, values)
    bars: list[Any] = []

    def stage(name: str, total: int) -> Any:
        if bars:
            bars.pop().__exit__(None, None, None)
        context = progress_bar(name, total)
        bar = context.__enter__()
        bars.append(context)
        return lambda n: bar.advance(bar.task_ids[0], n)

    try:
        report = run_pipeline(out, config, stage=stage, log=console.print)
    finally:
        if bars:
            bars.pop().__exit__(None, None, None)
    console.print(f"report: {report}")
