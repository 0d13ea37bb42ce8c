from __future__ import annotations

from circuitlab.core.progress import listen, progress_bar, stage_bars


def test_listeners_see_every_update_also_of_hidden_bars() -> None:
    events: list[tuple[str, float, float | None]] = []
    with listen(lambda *event: events.append(event)), progress_bar("work", 3, show=False) as bar:
        for _ in range(3):
            bar.advance(bar.task_ids[0])
    assert events == [("work", 0, 3), ("work", 1, 3), ("work", 2, 3), ("work", 3, 3)]
    with progress_bar("after", 1, show=False) as bar:  # the listener is gone
        bar.advance(bar.task_ids[0])
    assert len(events) == 4


def test_stage_bars_open_one_bar_per_stage() -> None:
    events: list[tuple[str, float, float | None]] = []
    with listen(lambda *event: events.append(event)), stage_bars(show=False) as stage:
        first = stage("first", 2)
        first(2)
        second = stage("second", 1)
        second(1)
    assert [e for e in events if e[1] == e[2]] == [("first", 2, 2), ("second", 1, 1)]
