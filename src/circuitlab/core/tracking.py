"""Reporting a training run's metrics to TensorBoard or Weights & Biases, where researchers
look, beside metrics.jsonl, which stays the source of truth (resume trims it, reports and
summaries read it).

A trainer logs through `Tracker.log_metrics` instead of `RunDir.log_metrics`: one call
writes the metrics.jsonl line and hands the same numbers, at the same step, to accelerate's
trackers, so the two cannot drift apart. Only the process that writes the run directory
(rank 0) opens trackers.

- tensorboard: event files in RUN/tensorboard/, one scalar tag per metric. Every start
  writes a new event file with a purge step just past the step it starts from, so the
  steps a killed attempt logged after its last checkpoint (those metrics.jsonl trims) are
  dropped by TensorBoard's reader instead of shown twice.
- wandb: a run under RUN/wandb/, offline unless WANDB_MODE says otherwise, so training
  never waits on a network; `wandb sync RUN/wandb/offline-run-*` uploads it later. A
  resumed run is a new W&B run of the same name that starts at the step it resumes from.

The setting changes where metrics are copied, never the results, so it is not part of a
run's identity (core.executor.identity leaves TRACKING_FIELDS out): a run started with
--report-to none resumes with tensorboard.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from circuitlab.core.config import require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.runs import RunDir

REPORT_TO = ("none", "tensorboard", "wandb")
REPORT_TO_HELP = (
    "Also send the metrics to tensorboard (RUN/tensorboard/) or wandb (RUN/wandb/, offline "
    "unless WANDB_MODE is set); none: metrics.jsonl only, which is always written."
)
TRACKING_FIELDS = ("report_to",)
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_report_to(report_to: str) -> None:
    """The setting's errors, for configs to raise on construction, before a run directory
    is written or data is built: an unknown tracker, or one whose package is missing."""
    require(report_to in REPORT_TO, f"report_to must be one of {', '.join(REPORT_TO)}, "
            f"not {report_to!r}")  # fmt: skip
    package = _PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise CircuitlabError(
            f"--report-to {report_to} needs the {package} package: pip install {package}"
        )


class Tracker:
    """metrics.jsonl plus the trackers of `open_tracker`; close it (or use `with`) so that
    wandb finishes its run. TensorBoard's events are flushed at every log, so a killed run
    keeps what it reported."""

    def __init__(self, run: RunDir, trackers: list[Any]) -> None:
        self.run = run
        self.trackers = trackers

    def log_metrics(self, **record: Any) -> None:
        self.run.log_metrics(**record)
        values = numbers(record)
        if values and self.trackers:
            step = record.get("step")
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def numbers(record: Mapping[str, Any]) -> dict[str, float | int]:
    """The values of a metrics record a tracker can plot: numbers, without the step (it is
    the x axis), flags, None or text."""
    return {
        k: v for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }  # fmt: skip


def open_tracker(
    report_to: str,
    run: RunDir,
    *,
    project: str,
    name: str,
    config: Mapping[str, Any] | None = None,
    start_step: int = 0,
    main: bool = True,
) -> Tracker:
    """A Tracker for `run`; `start_step` is the step the run (re)starts from, `config` what
    wandb records as the run's config, `main` whether this process writes the run."""
    check_report_to(report_to)
    if report_to == "none" or not main:
        return Tracker(run, [])
    from accelerate import PartialState
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    PartialState()  # the trackers' logging needs it; a launched run has it already
    tracker: Any
    if report_to == "tensorboard":
        tracker = TensorBoardTracker("tensorboard", run.path, purge_step=start_step + 1)
    else:
        tracker = WandBTracker(
            project, name=name, dir=str(run.path), mode=os.environ.get("WANDB_MODE", "offline"),
            config=dict(config or {}),
        )  # fmt: skip
    tracker.start()
    return Tracker(run, [tracker])
