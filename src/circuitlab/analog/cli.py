"""`circuitlab analog`: corpus -> knowledge nodes -> multi-agent QA distillation.

NSC-SFT fine-tuning and multiple-choice evaluation arrive with issue 7.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.core.config import config_from_dict, load_config
from circuitlab.core.progress import progress_bar

app = typer.Typer(
    help="AnalogSeeker (Chen et al. 2025) data pipeline: a textbook corpus becomes granular "
    "knowledge nodes tagged with an analog-design taxonomy, which cooperating LLM agents "
    "(question designer, solver, reviewer) distil into question / reasoning / answer data. "
    "Offline by default (embedded SmolLM2-135M); at scale, any OpenAI-compatible server. "
    "NSC-SFT fine-tuning and multiple-choice evaluation: NOT IMPLEMENTED YET (issue 7).",
    no_args_is_help=True,
)
console = Console(stderr=True)

CORPUS_HELP = "Folder of .txt/.md/.html/.pdf/.sml documents [default: the shipped textbook slice]."


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
        None, help="Taxonomy TOML [default: the shipped analog-design taxonomy]."
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
    taxonomy: Path | None = typer.Option(None, help="Taxonomy TOML [default: shipped]."),
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
        None, "--config", help="TOML file with a [distill] table of DistillConfig settings."
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
        help="Environment variable holding the API key [default: OPENAI_API_KEY]; "
        "the key is never written anywhere.",
    ),
    concurrency: int | None = typer.Option(None, help="HTTP requests in flight [8]."),
    max_nodes: int | None = typer.Option(None, help="Distil at most this many nodes [all]."),
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
