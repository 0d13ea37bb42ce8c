"""`circuitlab analog`: corpus -> knowledge nodes -> multi-agent QA distillation ->
NSC-SFT fine-tuning -> multiple-choice evaluation, and `run` for all of it end to end."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from circuitlab.core.commands import lazy_app, lazy_command
from circuitlab.core.progress import progress_bar, stage_bars

if TYPE_CHECKING:  # each command imports its config when it is built (see lazy_command)
    from circuitlab.analog.compare import CompareConfig
    from circuitlab.analog.distill import DistillConfig
    from circuitlab.analog.evaluate import EvalConfig
    from circuitlab.analog.nodes import NodesConfig
    from circuitlab.analog.nsc_sft import NSCConfig
    from circuitlab.analog.pipeline import PipelineConfig

app = lazy_app(
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


@lazy_command(app, "nodes", "circuitlab.analog.nodes:NodesConfig", table="nodes")
def nodes(
    config: NodesConfig,
    corpus: Path | None = typer.Option(None, help=CORPUS_HELP),
    out: Path = typer.Option(..., help="Run directory for nodes.jsonl and the summary."),
) -> None:
    """Ingest a corpus and decompose it into tagged learning nodes, with coverage per branch.

    Writes OUT/nodes.jsonl (id, kind, concept, text, provenance: file / section path /
    span in the cleaned document / source span, tags), sections.jsonl, documents.jsonl
    (the cleaned texts the spans point into), duplicates.jsonl and nodes_summary.json
    (skipped files with reasons, duplicates dropped, coverage per taxonomy branch).

    Example: circuitlab analog nodes --out runs/analog-nodes
    """
    summary = _build_nodes(_corpus(corpus), out, config)
    _print_nodes_summary(summary, out)


@lazy_command(app, "taxonomy")
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


@lazy_command(app, "distill", "circuitlab.analog.distill:DistillConfig", table="distill")
def distill(
    config: DistillConfig,
    corpus: Path | None = typer.Option(None, help=CORPUS_HELP + " Ignored with --nodes."),
    nodes_file: Path | None = typer.Option(
        None, "--nodes", help="Use this nodes.jsonl instead of building nodes from --corpus."
    ),
    out: Path = typer.Option(..., help="Run directory (a rerun resumes it)."),
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
    from circuitlab.analog.distill import distill as run_distill
    from circuitlab.analog.nodes import NodesConfig

    if nodes_file is None:
        nodes_config = NodesConfig(taxonomy=str(taxonomy.resolve()) if taxonomy else None)
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
    if summary["retryable"]:
        # not a user error (2): the server failed; the same command asks again for these
        console.print(
            f"[red]{summary['retryable']} node(s) failed on the backend (network, server "
            "errors, rate limits or a bad key); fix the cause and rerun the same command to "
            "retry them[/red]"
        )
        raise typer.Exit(3)


def _print_distill_summary(summary: dict[str, Any], out: Path) -> None:
    table = Table(title=f"distillation with {summary['model']} ({summary['backend']})")
    columns = ("nodes", "qa", "qa_per_node", "accepted", "failed")
    table.add_column("branch")
    for column in columns:
        table.add_column(column.replace("_per_", "/"), justify="right")
    for branch, counts in summary["coverage"].items():
        table.add_row(branch, *(str(counts.get(k, 0)) for k in columns))
    console.print(table)
    rate = summary["acceptance_rate"]
    per_node = summary.get("questions_per_node", 1)
    done = f"{summary['nodes_processed']}/{summary['nodes_selected']} nodes"
    if per_node > 1:
        done = (
            f"{summary['questions_processed']}/{summary['questions_selected']} questions "
            f"({per_node} a node, {summary['accepted_per_node']} accepted a node)"
        )
    console.print(
        f"{done}: "
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


@lazy_command(app, "train", "circuitlab.analog.nsc_sft:NSCConfig", table="train")
def train(
    config: NSCConfig,
    out: Path = typer.Option(..., help="Run directory (a rerun resumes from its checkpoint)."),
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
    from circuitlab.analog.nsc_sft import kl_summary
    from circuitlab.analog.nsc_sft import train as run_train

    result = run_train(config, out)
    console.print(
        f"{result['steps']}/{result['total_steps']} steps on {result['examples']} examples "
        f"({result['filtered_by_verdict']} filtered by verdict, {result['truncated']} "
        f"truncated): CE {result['first_ce']:.4f} -> {result['final_ce']:.4f}, "
        f"{kl_summary(result, 5)} (lambda {result['kl_lambda']:g}, reference "
        f"{result['reference']}), {result['mean_step_seconds']} s/step"
    )
    console.print(f"wrote {out / 'model'} and {out / 'results.json'}")


@lazy_command(app, "eval", "circuitlab.analog.evaluate:EvalConfig", table="eval")
def evaluate(
    config: EvalConfig,
    out: Path | None = typer.Option(None, help="Write the full results (JSON) here."),
) -> None:
    """Multiple-choice accuracy (overall, per subfield, Wilson 95% CI) and general-text drift.

    --protocol amsbench generates with AMSBench's prompt and answer format (**X**) at
    temperature 0.1 and reads the letter after any </think>; unparsable replies count as
    wrong and are listed by id.

    --backend openai asks an OpenAI-compatible server instead (generative protocols only,
    no drift; replies cached in llm-cache/ beside --out, failed requests retried).

    Example: circuitlab analog eval --model runs/nsc --mcq amsbench_tqa.jsonl
    Example: circuitlab analog eval --model runs/nsc-32b --device cuda --dtype bfloat16
    --mcq amsbench_tqa.json --protocol amsbench --max-new-tokens 4096
    Example: circuitlab analog eval --backend openai --base-url http://gpu:8000/v1
    --model Qwen/Qwen2.5-32B-Instruct --protocol amsbench --mcq amsbench_tqa.json
    --concurrency 32 --out runs/eval/qwen32b.json
    """
    from circuitlab.analog.evaluate import evaluate_mcq_and_drift, evaluate_remote
    from circuitlab.analog.mcq import load_mcq
    from circuitlab.core.devices import pick_device
    from circuitlab.core.lm import torch_dtype
    from circuitlab.core.threads import torch_threads

    if config.backend == "hf":
        torch_dtype(config.dtype)  # a bad name or device fails before the questions are read
        where = pick_device(config.device)
    count = len(load_mcq(config.mcq))
    limit = config.questions.limit
    if config.backend == "openai":
        with progress_bar("questions", min(count, limit or count)) as bar:
            result = evaluate_remote(
                config, out=out, on_batch=lambda n: bar.advance(bar.task_ids[0], n)
            )
        _print_eval(result)
        if out is not None:
            console.print(f"wrote {out}")
        return
    with (
        torch_threads(config.threads),
        progress_bar("questions", min(count, limit or count)) as bar,
    ):
        result = evaluate_mcq_and_drift(
            config.model,
            mcq=config.mcq,
            config=config.questions,
            probe=config.probe,
            base=config.base,
            drift=config.drift,
            drift_tokens=config.drift_tokens,
            out=out,
            on_batch=lambda n: bar.advance(bar.task_ids[0], n),
            dtype=config.dtype,
            device=where,
        )
    _print_eval(result)
    if out is not None:
        console.print(f"wrote {out}")


def _print_eval(result: dict[str, Any]) -> None:
    m = result["mcq"]
    served = f" at {result['source']}" if result.get("backend") == "openai" else ""
    title = f"{result['model']}{served}: {m['method']}"  # how the answers were got
    table = Table(title=title, min_width=min(len(title), console.width))
    for column in ("subfield", "n", "accuracy", "95% CI"):
        table.add_column(column, justify="left" if column == "subfield" else "right")
    for name, block in [*m["per_subfield"].items(), ("all", m)]:
        low, high = block["ci95"]
        table.add_row(name, str(block["n"]), f"{block['accuracy']:.3f}", f"{low:.2f}-{high:.2f}")
    console.print(table)
    extra = f", mean margin {m['mean_margin']:+.3f}" if m.get("mean_margin") is not None else ""
    console.print(f"{m['questions_per_second']} questions/s, {m['unparsed']} unparsed{extra}")
    if m["unparsed_ids"]:
        ids = m["unparsed_ids"]
        more = f" and {len(ids) - 20} more (all in --out)" if len(ids) > 20 else ""
        console.print(f"unparsed replies (counted wrong): {', '.join(ids[:20])}{more}")
    if "cache" in result:
        c = result["cache"]
        console.print(f"response cache {c['folder']}: {c['hits']} hits / {c['misses']} misses")
    if m.get("truncated"):
        console.print(f"{m['truncated']} replies cut off at --max-new-tokens")
    if "drift_skipped" in result:
        console.print(f"drift {result['drift_skipped']}")
    if "drift" in result:
        d = result["drift"]
        console.print(
            f"general text ({d['tokens']} tokens): KL to original {d['kl']:.5f}/token "
            f"(against {d['against']}), perplexity {d['perplexity']:.2f} "
            f"(original {d['reference_perplexity']:.2f})"
        )


@lazy_command(app, "compare", "circuitlab.analog.compare:CompareConfig", table="compare")
def compare(
    config: CompareConfig,
    run_a: Path = typer.Argument(..., help="Eval result JSON, or the run folder holding it."),
    run_b: Path = typer.Argument(..., help="The other one, on the same questions."),
    out: Path | None = typer.Option(None, help="Write the comparison (JSON) here."),
) -> None:
    """Paired comparison of two evaluations on the same questions: accuracy difference B - A
    with a paired bootstrap 95% interval and McNemar's exact p-value, overall, per subfield
    and per level.

    Questions are paired by id; runs on different question sets are refused.

    Example: circuitlab analog compare runs/analog/eval/base.json runs/analog/eval/l0.1.json
    """
    from circuitlab.analog.compare import compare_runs

    result = compare_runs(run_a, run_b, config, out=out)
    _print_compare(result)
    if out is not None:
        console.print(f"wrote {out}")


def _print_compare(result: dict[str, Any]) -> None:
    a, b = result["a"], result["b"]
    table = Table(
        title="\n".join(
            f"{k} = {r['model']} ({r['path']}; {r['mode']}, {r['scoring']})"
            for k, r in (("A", a), ("B", b))
        ),
        caption=f"B - A: paired bootstrap 95% CI ({result['resamples']} resamples, seed "
        f"{result['seed']}); p: McNemar exact; A>B, B>A: right in that run only",
    )
    for column in ("questions", "n", "A", "B", "B - A", "95% CI", "p", "A>B", "B>A"):
        table.add_column(column, justify="left" if column == "questions" else "right",
                         no_wrap=column != "questions")  # fmt: skip
    rows: list[tuple[str, dict[str, Any] | None]] = [("all", result)]
    for kind in ("subfield", "level"):
        if result[f"per_{kind}"]:
            rows += [
                (kind, None),
                *((f"  {k}", v) for k, v in result[f"per_{kind}"].items()),
            ]
    for name, block in rows:
        if block is None:
            table.add_section()
            table.add_row(f"[italic]{name}[/italic]")
            continue
        low, high = block["ci95"]
        table.add_row(
            name, str(block["n"]), f"{block['accuracy_a']:.3f}", f"{block['accuracy_b']:.3f}",
            f"{block['difference']:+.3f}", f"{low:+.2f},{high:+.2f}",
            f"{block['mcnemar_p']:.3g}", str(block["a_only"]), str(block["b_only"]),
        )  # fmt: skip
    Console().print(table)


@lazy_command(app, "run", "circuitlab.analog.pipeline:PipelineConfig", table="run")
def run_all(
    config: PipelineConfig,
    out: Path = typer.Option(Path("runs/analog"), help="Run directory (a rerun resumes)."),
) -> None:
    """Textbook slice -> nodes -> distillation -> LoRA NSC-SFT per lambda -> evaluation of
    base vs SFT vs NSC-SFT -> OUT/report.md with the trade-off plot (OUT/tradeoff.png).

    The default takes about 3 minutes on an idle 2-core CPU with the embedded 135M model: it
    shows the mechanics and the drift trade-off, not the paper's accuracy gains.

    Example: circuitlab analog run --out runs/analog
    """
    from circuitlab.analog.pipeline import run_pipeline

    with stage_bars() as stage:
        report = run_pipeline(out, config, stage=stage, log=console.print)
    console.print(f"report: {report}")
