"""core.executor on this machine: in-process and in worker processes (the Ray executor runs
in tests/cot/test_sweep.py and tests/circuits/test_evaluate.py, on real local clusters)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.executor import Unit, run_units
from circuitlab.core.progress import listen

sys.path.insert(0, str(Path(__file__).parent))  # spawned workers inherit it

from executor_units import square


@pytest.mark.parametrize("workers", [1, 2])
def test_units_run_in_order_report_progress_and_resume(tmp_path: Path, workers: int) -> None:
    units = [Unit(f"u{x}", square, (x, str(tmp_path)), cost=x) for x in range(5)]
    events: list[tuple[str, float, float | None]] = []
    with listen(lambda *e: events.append(e)):
        results = run_units(units, title="squares", workers=workers, show=False)
    assert [r["square"] for r in results] == [0, 1, 4, 9, 16]
    assert not any(r["resumed"] for r in results)
    for x in range(5):  # each unit's own bar reached its total, wherever it ran
        assert (f"  u{x}", 3, 3) in events
    assert events[-1][0].startswith("squares") and events[-1][1] == 5
    again = run_units(units, title="squares", workers=workers, show=False)
    assert [r["square"] for r in again] == [0, 1, 4, 9, 16] and all(r["resumed"] for r in again)


def test_bad_settings_are_user_errors(tmp_path: Path) -> None:
    unit = [Unit("u", square, (1, str(tmp_path)))]
    with pytest.raises(CircuitlabError, match="executor must be one of"):
        run_units(unit, title="t", executor="dask")
    with pytest.raises(CircuitlabError, match="workers must be at least 1"):
        run_units(unit, title="t", workers=0)
    with pytest.raises(CircuitlabError, match="needs --executor ray"):
        run_units(unit, title="t", ray_address="auto")
    assert not (tmp_path / "1.json").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_unit_stops_the_run_with_its_own_error(tmp_path: Path, workers: int) -> None:
    units = [Unit("bad", square, ("not a number", str(tmp_path)), cost=100)]
    units += [Unit(f"u{x}", square, (x, str(tmp_path))) for x in range(3)]
    with pytest.raises(TypeError):
        run_units(units, title="squares", workers=workers, show=False)
