"""Progress bars for long steps, one look across the whole tool, and one place to observe them.

Every bar goes through this module, so a listener (`listen`) sees every update of every bar
in the process: the demo uses that to record how long each stage went without reporting
progress, and tests use it to check that long work reports as it goes. A bar that is not
shown (`show=False`, e.g. a worker process) still reports to listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# callback(description, completed, total) after every change of any bar
Listener = Callable[[str, float, float | None], None]
_listeners: list[Listener] = []


@contextmanager
def listen(callback: Listener) -> Iterator[None]:
    """Call `callback` on every progress update in this process while the block runs."""
    _listeners.append(callback)
    try:
        yield
    finally:
        _listeners.remove(callback)


class _Observed(Progress):
    """A rich Progress that tells the listeners about every change."""

    def _notify(self, task_id: TaskID) -> None:
        if not _listeners:
            return
        task = self._tasks[task_id]
        for listener in list(_listeners):
            listener(task.description, task.completed, task.total)

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._notify(task_id)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._notify(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._notify(task_id)


def new_progress(*, show: bool = True, fields: str = "") -> Progress:
    """An observed rich Progress with the house columns; `fields` is a format string of
    task fields shown after the bar (e.g. "{task.fields[loss]}")."""
    columns: list[Any] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if fields:
        columns.append(TextColumn(fields))
    return _Observed(*columns, transient=False, disable=not show)


@contextmanager
def progress_bar(
    description: str, total: float | None, *, show: bool = True, fields: str = ""
) -> Iterator[Progress]:
    """A rich progress bar on stderr; advance it with `bar.advance(bar.task_ids[0], n)`."""
    bar = new_progress(show=show, fields=fields)
    with bar:
        bar.add_task(description, total=total)
        yield bar


@contextmanager
def stage_bars(*, show: bool = True) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """`stage(name, total)` closes the previous stage's bar, opens one for `name` and returns
    the function that advances it: for pipelines that run one stage after another."""
    with ExitStack() as stack:
        current: list[ExitStack] = []

        def stage(name: str, total: int) -> Callable[[int], None]:
            if current:
                current.pop().close()
            inner = stack.enter_context(ExitStack())
            bar = inner.enter_context(progress_bar(name, total, show=show))
            current.append(inner)
            return lambda n: bar.advance(bar.task_ids[0], n)

        yield stage
