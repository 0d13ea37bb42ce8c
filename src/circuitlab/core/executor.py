"""Running independent units of work (sweep points, evaluation cells) on this machine or a
Ray cluster, with one progress display and results in the order the units were given.

A unit is a top-level function and its arguments; it must be resumable on its own (write its
own run directory atomically and return early when it is done), because the executor keeps
no state: a killed run is resumed by running every unit again, and the finished ones return
at once. Units report progress by calling the `progress(done, total)` keyword argument they
are given; from other processes the calls travel over a queue to the parent's bars.

- `local`, workers=1: one unit after another in this process.
- `local`, workers=N: N spawned processes with cpu_count // N torch threads each.
- `ray`: Ray tasks on the cluster at `ray_address` ("auto", "HOST:PORT"), or on a local
  cluster of `workers` CPUs started for the run and stopped after it. Each task asks for
  as many CPUs as a local worker would have threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from queue import Empty
from typing import Any

from rich.progress import Progress, TaskID

from circuitlab.core.config import config_to_dict, option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.progress import new_progress
from circuitlab.core.tracking import TRACKING_FIELDS

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Unit:
    name: str
    function: Callable[..., Any]  # module-level, so that it pickles; called with progress=
    args: tuple[Any, ...]
    cost: float = 1.0  # relative; the most expensive units start first
    gpus: float = 0.0  # what a Ray task asks for, where the cluster has GPUs


Summarize = Callable[[Unit, Any], str]


@dataclass(frozen=True)
class Execution:
    """How a command's units run, for configs to inherit. These settings change where the
    work happens, never its results, so they are not part of a run's identity (`identity`):
    a run started with one executor resumes with another."""

    executor: str = option("local", "local (this machine) or ray (a Ray cluster).")
    workers: int = option(
        1,
        "Units run at once: local worker processes with an equal share of the CPU threads "
        "each (2 is faster on a 2-core CPU for small models; keep 1 on a GPU), or the CPUs of "
        "the Ray cluster started for the run.",
    )
    ray_address: str | None = option(
        None,
        "With --executor ray: a running cluster (auto, or HOST:PORT); none: a local one of "
        "--workers CPUs, started for this run and stopped after it.",
    )

    def __post_init__(self) -> None:
        check_executor(self.executor, self.workers, self.ray_address)

    def run(self, units: Sequence[Unit], **kwargs: Any) -> list[Any]:
        return run_units(units, executor=self.executor, workers=self.workers,
                         ray_address=self.ray_address, **kwargs)  # fmt: skip


EXECUTION_FIELDS = ("executor", "workers", "ray_address")


def identity(config: Any) -> dict[str, Any]:
    """`config` as a run directory records it: without the settings of its Execution, nor
    where its metrics are reported (core.tracking), which change no result either."""
    settings = (*EXECUTION_FIELDS, *TRACKING_FIELDS)
    return {k: v for k, v in config_to_dict(config).items() if k not in settings}


def run_units(
    units: Sequence[Unit],
    *,
    title: str,
    executor: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    show: bool = True,
    summarize: Summarize | None = None,
) -> list[Any]:
    """Run every unit; return their results in the order of `units`.

    `summarize(unit, result)` gives the line printed when a unit finishes.
    """
    check_executor(executor, workers, ray_address)
    threads = max(1, (os.cpu_count() or 1) // workers)
    order = sorted(range(len(units)), key=lambda i: units[i].cost, reverse=True)
    where = (
        "in this process" if executor == "local" and workers == 1
        else f"on {workers} {'workers' if executor == 'local' else 'Ray CPUs'}"
    )  # fmt: skip
    with _Display(units, f"{title}: {len(units)} units {where}", show, summarize) as display:
        if executor == "ray":
            _run_ray(units, order, display, workers, threads, ray_address)
        elif workers == 1:
            for i in order:
                display.finished(i, units[i].function(*units[i].args, progress=display.reporter(i)))
        else:
            _run_processes(units, order, display, workers, threads)
    return display.results()


def check_executor(executor: str, workers: int, ray_address: str | None = None) -> None:
    """The executor settings' errors, for callers to raise before they write anything."""
    require(executor in EXECUTORS, f"executor must be one of {', '.join(EXECUTORS)}")
    require(workers >= 1, f"workers must be at least 1, got {workers}")
    require(ray_address is None or executor == "ray", "--ray-address needs --executor ray")


class _Display:
    """The overall bar, one bar per unit in progress, and the results as they arrive."""

    def __init__(
        self, units: Sequence[Unit], title: str, show: bool, summarize: Summarize | None
    ) -> None:
        self.units, self.show, self.summarize = units, show, summarize
        self.bars: Progress = new_progress(show=show)
        self.overall = self.bars.add_task(title, total=len(units))
        self.running: dict[int, TaskID] = {}
        self._results: dict[int, Any] = {}

    def __enter__(self) -> _Display:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def step(self, i: int, done: float, total: float) -> None:
        if i in self._results:  # a late message from a unit that has finished
            return
        if i not in self.running:
            self.running[i] = self.bars.add_task(f"  {self.units[i].name}", total=total)
        self.bars.update(self.running[i], completed=done, total=total)

    def reporter(self, i: int) -> Callable[[float, float], None]:
        return lambda done, total: self.step(i, done, total)

    def finished_remote(self, i: int, returned: tuple[Any, Any]) -> None:
        result, final = returned
        if final is not None:
            self.step(i, *final)
        self.finished(i, result)

    def finished(self, i: int, result: Any) -> None:
        self._results[i] = result
        if i in self.running:
            self.bars.remove_task(self.running.pop(i))
        self.bars.advance(self.overall)
        if self.show and self.summarize is not None:
            self.bars.console.print(self.summarize(self.units[i], result))

    def results(self) -> list[Any]:
        return [self._results[i] for i in range(len(self.units))]


class _Throttled:
    """A unit's `progress` in another process: at most twice a second onto the queue."""

    def __init__(self, queue: Any, index: int) -> None:
        self.queue, self.index, self.last = queue, index, 0.0
        self.final: tuple[float, float] | None = None  # returned with the result

    def __call__(self, done: float, total: float) -> None:
        self.final = (done, total)
        now = time.monotonic()
        if done >= total or now - self.last >= 0.5:
            self.last = now
            self.queue.put((self.index, done, total))


_queue: Any = None  # a local worker process's channel to the parent


def _init_local_worker(queue: Any) -> None:
    global _queue
    _queue = queue


def _call(unit: Unit, index: int, threads: int, queue: Any) -> tuple[Any, Any]:
    """A unit in a worker (a local process or a Ray task), on its share of the CPU; returns
    its result and its last progress, which the queue need not have delivered yet."""
    from circuitlab.core.threads import torch_threads

    progress = _Throttled(queue, index)
    with torch_threads(threads):
        return unit.function(*unit.args, progress=progress), progress.final


def _call_local(unit: Unit, index: int, threads: int) -> Any:
    return _call(unit, index, threads, _queue)


def _drain(queue: Any, display: _Display) -> None:
    """Show what the workers reported so far (a multiprocessing or a Ray queue)."""
    while True:
        try:
            i, done, total = queue.get_nowait()
        except Empty:  # ray.util.queue.Empty is a queue.Empty too
            return
        display.step(i, done, total)


def _run_processes(
    units: Sequence[Unit], order: list[int], display: _Display, workers: int, threads: int
) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_init_local_worker,
                             initargs=(queue,)) as pool:  # fmt: skip
        futures = {pool.submit(_call_local, units[i], i, threads): i for i in order}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(queue, display)
                for future in finished:
                    display.finished_remote(futures[future], future.result())
        except BaseException:
            # a failed unit (or Ctrl-C) stops the run: queued units are dropped, and the
            # queue is drained while the running ones finish, so no worker blocks on it
            pool.shutdown(wait=False, cancel_futures=True)
            while not all(f.done() for f in pending):
                with contextlib.suppress(Empty):
                    queue.get(timeout=0.1)
            raise


def _run_ray(
    units: Sequence[Unit],
    order: list[int],
    display: _Display,
    workers: int,
    threads: int,
    address: str | None,
) -> None:
    try:
        import ray
        from ray.util.queue import Queue as RayQueue
    except ImportError:
        raise CircuitlabError(
            "the ray executor needs Ray: pip install 'circuitlab[ray]' (or use --executor local)"
        ) from None
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a local cluster for this run only
            ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
    if address:  # a cluster of its own size: one CPU a task, Ray packs them onto its nodes
        threads = 1
    try:
        queue = RayQueue()

        call = ray.remote(num_cpus=threads)(_call)

        has_gpus = bool(ray.cluster_resources().get("GPU"))
        refs = {
            call.options(num_gpus=units[i].gpus if has_gpus else 0).remote(
                units[i], i, threads, queue
            ): i
            for i in order
        }
        pending = list(refs)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            _drain(queue, display)
            for ref in finished:
                display.finished_remote(refs[ref], ray.get(ref))
    finally:
        if started:
            ray.shutdown()
