"""Plots written to files (matplotlib, Agg backend: no display needed), saved atomically."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.core.io import atomic_write_bytes


def save_heatmaps(
    path: str | Path,
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    xlabel: str,
    ylabel: str,
    colorbar: str,
    marked: Iterable[tuple[int, int]] = (),
    title: str = "",
) -> Path:
    """One heatmap per (title, matrix [rows, cols]) side by side; `marked` cells are outlined.

    The colour scale is symmetric around zero and shared by all panels, so a signed effect
    reads the same everywhere.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    marked = list(marked)
    rows, cols = panels[0][1].shape
    limit = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0 for _, m in panels)
    limit = limit or 1.0
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.2 + 0.45 * cols * len(panels), 1.5 + 0.22 * rows),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, (ax, (name, matrix)) in enumerate(zip(axes[0], panels, strict=True)):
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        if i == 0:
            ax.set_ylabel(ylabel)
        ax.set_xticks(range(cols))
        ax.set_yticks(range(0, rows, max(1, rows // 15)))
        for r, c in marked:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=1.2, ec="black"))
    fig.colorbar(image, ax=axes[0].tolist(), label=colorbar, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120, **savefig: Any) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **savefig)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
