"""The circuits tasks: IOI, greater-than, docstring, or a user's JSONL file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitlab.circuits.tasks.common import METRICS, CircuitTask
from circuitlab.circuits.tasks.docstring import make_docstring
from circuitlab.circuits.tasks.greater_than import make_greater_than
from circuitlab.circuits.tasks.ioi import make_ioi
from circuitlab.circuits.tasks.jsonl import load_jsonl_task
from circuitlab.core.errors import CircuitlabError

TASKS: dict[str, Callable[..., CircuitTask]] = {
    "ioi": make_ioi,
    "greater-than": make_greater_than,
    "docstring": make_docstring,
}

__all__ = ["METRICS", "TASKS", "CircuitTask", "make_task"]


def make_task(spec: str, tokenizer: Any, n: int = 250, seed: int = 0) -> CircuitTask:
    """A built-in task by name (`n` pairs, seeded) or a user task from a .jsonl file."""
    if spec in TASKS:
        return TASKS[spec](tokenizer, n=n, seed=seed)
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return load_jsonl_task(spec, tokenizer, n=n)
    raise CircuitlabError(
        f"unknown task {spec!r}: use one of {', '.join(TASKS)} or a path to a .jsonl file"
    )
