"""What a sweep reports: mean/min/max over seeds per (task, size, variant), the CSV of
every point, the Markdown report beside the official numbers, and the accuracy-vs-size
plot (the picture of the paper's Figure 3)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from circuitlab.core.plotting import save_figure


def _variant(result: dict[str, Any]) -> str:
    kind = "cot" if result["format"] == "cot" else f"direct L{result['layers']}"
    return " ".join([kind, *(f"{k}={v}" for k, v in result.get("axes", {}).items())])


def _variant_order(variant: str) -> tuple[bool, str]:
    return not variant.startswith("cot"), variant  # CoT first


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, min and max answer accuracy over seeds for each (task, size, variant)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["task"], r["size"], _variant(r))].append(r)
    rows = []
    for (task, size, variant), rs in sorted(groups.items()):
        acc = [r["answer_accuracy"] for r in rs]
        chain = [r["chain_accuracy"] for r in rs]
        # results of runs before the official metric existed lack it: answer accuracy then
        official = [r.get("official_accuracy", r["answer_accuracy"]) for r in rs]
        fit = [r["train_official_accuracy"] for r in rs if "train_official_accuracy" in r]
        at_size = {}
        for m in sorted({m for r in rs for m in r.get("at_size", {})}, key=int):
            got = [r["at_size"][m] for r in rs if m in r.get("at_size", {})]
            at_size[f"official_accuracy_at_{m}"] = sum(got) / len(got)
        rows.append({
            "task": task, "size": size, "variant": variant, "seeds": len(rs),
            "answer_accuracy": sum(acc) / len(acc), "min": min(acc), "max": max(acc),
            "chain_accuracy": sum(chain) / len(chain),
            "official_accuracy": sum(official) / len(official),
            "train_official_accuracy": sum(fit) / len(fit) if fit else None,
            "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs), **at_size,
        })  # fmt: skip
    return rows


def to_csv(point_rows: list[dict[str, Any]]) -> str:
    fields = ["name", "task", "size", "format", "layers", "seed", "answer_accuracy",
              "chain_accuracy", "official_metric", "official_accuracy",
              "train_answer_accuracy", "train_official_accuracy", "right_answer_wrong_chain",
              "examples", "parameters", "steps", "train_seconds", "eval_seconds",
              "tokens_per_s"]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(point_rows)
    return buffer.getvalue()


# Final test accuracy of the official runs, mean of four seeds (reference/cot.md).
OFFICIAL: dict[tuple[str, int], dict[str, float]] = {
    ("arithmetic", 4): {"direct L3": 0.729, "direct L4": 0.914, "direct L5": 0.968},
    ("arithmetic", 5): {"direct L3": 0.374, "direct L4": 0.322, "direct L5": 0.699},
    ("arithmetic", 6): {"direct L3": 0.254, "direct L4": 0.252, "direct L5": 0.491},
    ("lis", 50): {"direct L3": 0.644, "direct L4": 0.908, "direct L5": 0.959},
    ("lis", 80): {"direct L3": 0.300, "direct L4": 0.630, "direct L5": 0.752},
    ("lis", 100): {"direct L3": 0.226, "direct L4": 0.335, "direct L5": 0.551},
    ("ed", 12): {"direct L3": 0.752, "direct L4": 0.872, "direct L5": 0.934},
    ("ed", 16): {"direct L3": 0.547, "direct L4": 0.720, "direct L5": 0.799},
    ("ed", 20): {"direct L3": 0.426, "direct L4": 0.579, "direct L5": 0.640},
    ("equation", 3): {"direct L3": 0.025, "direct L4": 0.04, "direct L5": 0.04},
    ("equation", 4): {"direct L3": 0.0, "direct L4": 0.0, "direct L5": 0.0},
    ("equation", 5): {"direct L3": 0.0, "direct L4": 0.0, "direct L5": 0.0},
}
OFFICIAL_COT_MIN = 0.9946  # CoT (3 layers) reached at least this everywhere


def report_markdown(profile: Any, rows: list[dict[str, Any]]) -> str:
    """`profile` is a sweep.Profile (its name, note and eval_sizes; not imported, since the
    sweep imports this module)."""
    variants = sorted({r["variant"] for r in rows}, key=_variant_order)
    lines = [
        f"# cot sweep, profile `{profile.name}`",
        "",
        profile.note + ".",
        "",
        "Final-answer accuracy on held-out problems (greedy decoding), mean over seeds.",
        "",
        *_accuracy_table(rows, variants, "answer_accuracy"),
        "",
        "The official code's metric, the one its numbers below report: the generated answer "
        "for arithmetic and equation CoT, the whole continuation through `<eos>` (exact "
        "match) for LIS and ED CoT and for every direct model.",
        "",
        *_accuracy_table(rows, variants, "official_accuracy"),
        "",
        "The same metric on training problems (as many as the in-training evaluations "
        "use): low here too means the model failed to fit, not to generalise.",
        "",
        *_accuracy_table(rows, variants, "train_official_accuracy"),
    ]
    for size in profile.eval_sizes:
        lines += ["", f"The same metric on {size}-size problems (rows: the trained size).", ""]
        lines += _accuracy_table(rows, variants, f"official_accuracy_at_{size}")
    by_key = {(r["task"], r["size"]) for r in rows}
    official = sorted(k for k in by_key if k in OFFICIAL)
    header = f"Official (paper) numbers at the same sizes; CoT >= {OFFICIAL_COT_MIN}:"
    if not official:  # scaled-down sizes: the paper's own, for the shape of the result
        official = sorted(k for k in OFFICIAL if k[0] in {task for task, _ in by_key})
        header = (f"The paper at its (larger) sizes: 3-layer CoT >= {OFFICIAL_COT_MIN} "
                  "everywhere; direct at 3/4/5 layers:")  # fmt: skip
    if official:
        lines += ["", header, ""]
        for key in official:
            parts = ", ".join(f"{v} {a:.3f}" for v, a in OFFICIAL[key].items())
            lines.append(f"- {key[0]} n={key[1]}: {parts}")
    lines += ["", "![accuracy vs size](accuracy_vs_size.png)", ""]
    return "\n".join(lines)


def _accuracy_table(rows: list[dict[str, Any]], variants: list[str], metric: str) -> list[str]:
    by_key: dict[tuple[str, int], dict[str, float | None]] = defaultdict(dict)
    for r in rows:
        by_key[(r["task"], r["size"])][r["variant"]] = r.get(metric)
    lines = [
        "| task | size | " + " | ".join(variants) + " |",
        "| --- | --- | " + " | ".join("---" for _ in variants) + " |",
    ]
    for (task, size), accs in sorted(by_key.items()):
        cells = [f"{accs[v]:.3f}" if accs.get(v) is not None else "" for v in variants]
        lines.append(f"| {task} | {size} | " + " | ".join(cells) + " |")
    return lines


def plot_accuracy(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """One panel per task: accuracy vs size, CoT solid, direct per depth dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in rows if r["task"] == task]
        for variant in sorted({r["variant"] for r in mine}, key=_variant_order):
            pts = sorted((r for r in mine if r["variant"] == variant), key=lambda r: r["size"])
            sizes = [r["size"] for r in pts]
            mean = [r["answer_accuracy"] for r in pts]
            err = [[m - r["min"] for m, r in zip(mean, pts, strict=True)],
                   [r["max"] - m for m, r in zip(mean, pts, strict=True)]]  # fmt: skip
            style = "-o" if variant.startswith("cot") else "--s"
            ax.errorbar(sizes, mean, yerr=err, fmt=style, capsize=3, label=variant)
        ax.set_title(task)
        ax.set_xlabel("problem size")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted({r["size"] for r in mine}))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final-answer accuracy")
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"CoT vs direct ({title} profile)")
    fig.tight_layout()
    save_figure(fig, path)
