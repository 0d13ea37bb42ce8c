"""The four tasks of Feng et al. 2023, by name."""

from __future__ import annotations

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks import arithmetic, ed, equation, lis
from circuitlab.cot.tasks.common import Example, Task, TokenBatch, Verdict, Vocab

TASKS: dict[str, Task] = {t.name: t for t in (arithmetic.TASK, equation.TASK, lis.TASK, ed.TASK)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise CircuitlabError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Example", "Task", "TokenBatch", "Verdict", "Vocab", "get_task"]
