"""core.tracking: the metrics.jsonl records reach TensorBoard (and wandb) at their steps,
once each across a resume, without entering the run's identity."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from circuitlab.core.config import option
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.executor import identity
from circuitlab.core.runs import RunDir
from circuitlab.core.tracking import REPORT_TO_HELP, check_report_to, numbers, open_tracker

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="pip install tensorboard")


def scalars(run: Path, tag: str) -> dict[int, float]:
    """What TensorBoard shows for `tag`: step -> value, after its purge rules."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    found = [(e.step, e.value) for e in events.Scalars(tag)]
    assert len({s for s, _ in found}) == len(found), f"a step of {tag} shown twice: {found}"
    return dict(found)


def logged(run: RunDir, key: str) -> dict[int, float]:
    return {r["step"]: float(np.float32(r[key])) for r in run.metrics() if key in r}


@dataclass(frozen=True)
class _Config:
    lr: float = option(0.1, "lr")
    report_to: str = option("none", REPORT_TO_HELP)

    def __post_init__(self) -> None:
        check_report_to(self.report_to)


@needs_tensorboard
def test_tensorboard_gets_the_same_numbers_as_metrics_jsonl(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path / "run", {"a": 1})
    with open_tracker("tensorboard", run, project="p", name="run") as tracker:
        for step in (5, 10, 15):
            tracker.log_metrics(step=step, loss=1 / step, tokens=100 * step, note="text",
                                ok=True, rate=None)  # fmt: skip
    assert [r["step"] for r in run.metrics()] == [5, 10, 15]
    assert run.metrics()[0]["note"] == "text"  # metrics.jsonl keeps everything
    assert scalars(run.path, "loss") == logged(run, "loss")
    assert scalars(run.path, "tokens") == {5: 500.0, 10: 1000.0, 15: 1500.0}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "tokens"]  # no text, flag or None


@needs_tensorboard
def test_a_resumed_run_shows_each_step_once_with_the_values_metrics_jsonl_keeps(
    tmp_path: Path,
) -> None:
    run = RunDir.open(tmp_path / "run", {"a": 1})
    killed = open_tracker("tensorboard", run, project="p", name="run")
    for step in range(1, 7):  # the attempt dies after step 6, its checkpoint was step 4
        killed.log_metrics(step=step, loss=10.0 + step)
    run.trim_metrics(4)  # what a trainer does when it resumes from step 4
    with open_tracker("tensorboard", run, project="p", name="run", start_step=4) as tracker:
        for step in range(5, 9):
            tracker.log_metrics(step=step, loss=20.0 + step)
    shown = scalars(run.path, "loss")
    assert shown == logged(run, "loss")
    assert shown == {1: 11.0, 2: 12.0, 3: 13.0, 4: 14.0, 5: 25.0, 6: 26.0, 7: 27.0, 8: 28.0}


def test_none_and_other_ranks_write_only_metrics_jsonl(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path / "run", {"a": 1})
    with open_tracker("none", run, project="p", name="run") as tracker:
        tracker.log_metrics(step=1, loss=0.5)
    with open_tracker("tensorboard", run, project="p", name="run", main=False) as tracker:
        assert tracker.trackers == []
    assert run.metrics() == [{"step": 1, "loss": 0.5}]
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "metrics.jsonl"]


def test_a_missing_package_is_a_one_line_error_naming_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb")
        else real(name, *a),
    )  # fmt: skip
    run = RunDir.open(tmp_path / "run", {"a": 1})
    for kind in ("tensorboard", "wandb"):
        with pytest.raises(CircuitlabError, match=f"pip install {kind}$"):
            open_tracker(kind, run, project="p", name="run")
        with pytest.raises(CircuitlabError, match=f"pip install {kind}$"):
            _Config(report_to=kind)  # on construction, before a run writes anything
    with pytest.raises(CircuitlabError, match="report_to must be one of none, tensorboard"):
        check_report_to("mlflow")


def test_numbers_keep_what_a_tracker_can_plot() -> None:
    record = {"step": 3, "loss": 0.25, "tokens": 7, "ok": False, "x": None, "name": "a"}
    assert numbers(record) == {"loss": 0.25, "tokens": 7}


@needs_tensorboard
def test_report_to_is_not_part_of_a_runs_identity(tmp_path: Path) -> None:
    assert identity(_Config()) == {"lr": 0.1}
    RunDir.open(tmp_path / "run", identity(_Config()))
    RunDir.open(tmp_path / "run", identity(_Config(report_to="tensorboard")))  # resumes
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"lr": 0.1}
    with pytest.raises(CircuitlabError, match="differs in: lr"):
        RunDir.open(tmp_path / "run", identity(_Config(lr=0.2)))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_runs_offline_under_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = RunDir.open(tmp_path / "run", {"a": 1})
    with open_tracker("wandb", run, project="p", name="run", config={"a": 1}) as tracker:
        tracker.log_metrics(step=1, loss=0.5)
    assert list((run.path / "wandb").glob("offline-run-*"))
    assert run.metrics() == [{"step": 1, "loss": 0.5}]


class _FakeWandbRun:
    def __init__(self, **init: object) -> None:
        self.init, self.logged, self.finished = init, [], False

    def log(self, values: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


@pytest.mark.parametrize("user_mode", [None, "online"])
def test_wandb_is_offline_under_the_run_directory_unless_the_user_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_mode: str | None
) -> None:
    """Through accelerate's WandBTracker with a stand-in wandb (the real one is not a
    dependency): what wandb.init is given, and what it is sent."""
    import importlib.machinery
    import sys
    import types

    runs: list[_FakeWandbRun] = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: runs.append(_FakeWandbRun(**kw)) or runs[-1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    if user_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", user_mode)
    run = RunDir.open(tmp_path / "run", {"a": 1})
    with open_tracker("wandb", run, project="proj", name="ar3", config={"a": 1}) as tracker:
        tracker.log_metrics(step=7, loss=0.5, note="x")
    (made,) = runs
    assert made.init == {"project": "proj", "name": "ar3", "dir": str(run.path),
                         "mode": user_mode or "offline", "config": {"a": 1}}  # fmt: skip
    assert made.logged == [(7, {"loss": 0.5})] and made.finished
    assert run.metrics() == [{"step": 7, "loss": 0.5, "note": "x"}]
