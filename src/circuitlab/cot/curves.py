"""A run's learning curve: train and test accuracy against epochs, from metrics.jsonl.

The two curves tell "fails to fit" (train accuracy low too) from "fails to generalise"
(train high, test low), which a final test number alone cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitlab.core.plotting import save_figure
from circuitlab.cot.config import TrainConfig


def accuracy_points(metrics: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Evaluation records by epoch; a record logged twice (a resumed run's final
    evaluation) counts once, the later one."""
    return {int(r["epoch"]): r for r in metrics if "eval_official_accuracy" in r}


def plot_learning_curve(metrics: Sequence[dict[str, Any]], path: Path, config: TrainConfig) -> bool:
    """Write the curve to `path` (PNG); False, writing nothing, with no evaluation logged."""
    points = accuracy_points(metrics)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted(points)
    metric = points[epochs[-1]]["eval_official_metric"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for split, prefix, style in (("test", "eval_", "-o"), ("train", "train_", "--s")):
        values = [points[e].get(f"{prefix}official_accuracy") for e in epochs]
        shown = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
        ax.plot([e for e, _ in shown], [v for _, v in shown], style, label=split)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"accuracy ({metric} metric)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{config.task} n={config.size} {config.format}, {config.layers} layers")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True
