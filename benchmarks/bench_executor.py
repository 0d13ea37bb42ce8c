"""The local and the Ray executor side by side on the same tiny units, in one run.

    python benchmarks/bench_executor.py [--units 8] [--workers 2] [--rounds 2]

Each unit is a tiny cot training run (LIS n=5, d_model 16, a few hundred examples: about a
second of work), so what is measured is mostly the executor: spawning or scheduling, moving
configs and results, and progress over the queue. Each round runs all units on both
executors into fresh directories (local first in odd rounds, Ray first in even ones).

Reported per executor: wall time of `run_units` (for Ray without and with starting the local
cluster, which the executor does when no --ray-address is given), the work inside the units
(the sum of their own train + eval seconds), and the overhead per unit:
(wall - work / workers) / units, the time a unit costs beyond its own work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from circuitlab.core.executor import Unit, run_units
from circuitlab.cot.sweep import _train_point
from circuitlab.cot.train import TrainConfig

TINY = TrainConfig(task="lis", size=5, num=300, test_num=20, layers=1, d_model=16, heads=2,
                   dropout=0.0, epochs=1, batch_size=32, checkpoint_every=1000,
                   device="cpu")  # fmt: skip


def units(root: Path, n: int) -> list[Unit]:
    return [
        Unit(f"u{i}", _train_point, (dataclasses.replace(TINY, seed=i), str(root / f"u{i}")))
        for i in range(n)
    ]


def one(executor: str, root: Path, n: int, workers: int) -> dict[str, float]:
    import ray

    started = time.perf_counter()
    cluster = 0.0
    if executor == "ray":  # started here so that its cost is measured on its own
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        cluster = time.perf_counter() - started
    try:
        begin = time.perf_counter()
        results = run_units(units(root, n), title=executor, executor=executor,
                            workers=workers, show=False)  # fmt: skip
        wall = time.perf_counter() - begin
    finally:
        if executor == "ray":
            ray.shutdown()
    work = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    return {"wall_s": wall, "cluster_start_s": cluster, "work_s": work,
            "overhead_per_unit_s": (wall - work / workers) / n}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
            for executor in order:
                root = Path(tmp) / f"{executor}-{r}"
                rows[executor].append(one(executor, root, args.units, args.workers))
    summary = {}
    for executor, runs in rows.items():
        mean = {k: round(sum(x[k] for x in runs) / len(runs), 3) for k in runs[0]}
        summary[executor] = mean
    summary["ray_over_local_wall"] = round(summary["ray"]["wall_s"] / summary["local"]["wall_s"], 3)
    print(json.dumps({"units": args.units, "workers": args.workers, "rounds": args.rounds,
                      **summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
