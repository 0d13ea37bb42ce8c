"""A run directory: everything one job produced, laid out the same way for every system.

    config.json     the exact configuration (a rerun with another config is refused)
    metrics.jsonl   one line per logged step, appended as the job goes
    results.json    the final numbers, written atomically
    done/           one empty marker per finished unit of work, so a rerun skips it
    timings.json    wall seconds per finished stage (`run_stage`)
    checkpoints/    model and optimizer state
    report.md       what a human reads

Reopening a directory with the same config resumes it: finished units stay finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
)


def _as_stored(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as it reads back from config.json: tuples become lists."""
    return json.loads(json.dumps(dict(config)))


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def open(
        cls, path: str | Path, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
    ) -> RunDir:
        """Create the run directory, or reopen it if it holds a run of the same config.

        `defaults` are the config's field defaults: a run recorded before a field existed
        lacks it, and ran as that field's default does, so it still reopens (resumes).
        """
        run = cls(Path(path))
        stored_path = run.path / "config.json"
        wanted = _as_stored(config)
        if stored_path.exists():
            stored = read_json(stored_path)
            for key, value in _as_stored(defaults or {}).items():
                stored.setdefault(key, value)
            if stored != wanted:
                keys = stored.keys() | wanted.keys()
                changed = sorted(k for k in keys if stored.get(k) != wanted.get(k))
                raise CircuitlabError(
                    f"{run.path} already holds a run with a different config "
                    f"(differs in: {', '.join(changed)}); choose another directory or delete it"
                )
        else:
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CircuitlabError(
                    f"cannot create run directory {run.path}: {e.strerror}"
                ) from None
            atomic_write_json(stored_path, wanted)
        return run

    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path / "config.json")

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def log_metrics(self, **record: Any) -> None:
        append_jsonl(self.path / "metrics.jsonl", [record])

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        return read_jsonl(path, mode="run") if path.exists() else []

    def trim_metrics(self, step: int) -> None:
        """Drop metric lines logged after `step`, the step a resumed run restarts from: it
        logs those steps again, and a reader must not see them twice."""
        path = self.path / "metrics.jsonl"
        if path.exists():
            kept = [r for r in read_jsonl(path, mode="run") if r.get("step", 0) <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_results(self, results: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / "results.json", dict(results))

    def results(self) -> dict[str, Any]:
        return read_json(self.path / "results.json")

    def write_report(self, markdown: str) -> Path:
        path = self.path / "report.md"
        atomic_write_text(path, markdown)
        return path

    def is_done(self, unit: str) -> bool:
        return (self.path / "done" / unit).exists()

    def mark_done(self, unit: str) -> None:
        marker = self.path / "done" / unit
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def run_stage(self, name: str, work: Callable[[], object]) -> bool:
        """Run `work` as stage `name` unless an earlier invocation finished it; returns
        whether it ran.

        The stage's wall time goes into timings.json the moment it finishes, beside the
        times of the stages earlier invocations finished. One rule for every caller: a
        stage's time is that of the invocation that finished it (a failed or killed attempt
        records nothing), rounded to 0.1 s.
        """
        if self.is_done(name):
            return False
        started = time.perf_counter()
        work()
        seconds = round(time.perf_counter() - started, 1)
        atomic_write_json(self.path / "timings.json", {**self.timings(), name: seconds})
        self.mark_done(name)
        return True

    def timings(self) -> dict[str, float]:
        """Seconds per finished stage (see `run_stage`), in the order they finished."""
        path = self.path / "timings.json"
        return read_json(path) if path.exists() else {}
