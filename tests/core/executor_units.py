"""Module-level units for tests/core/test_executor.py (spawned workers import them by name)."""

from __future__ import annotations

import json
from pathlib import Path


def square(x: int, folder: str, *, progress) -> dict:
    """A resumable unit: its result file is its done marker; it reports three steps."""
    done = Path(folder) / f"{x}.json"
    if done.exists():
        return {**json.loads(done.read_text()), "resumed": True}
    for step in range(1, 4):
        progress(step, 3)
    result = {"x": x, "square": x * x}
    done.write_text(json.dumps(result))
    return {**result, "resumed": False}
