from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.threads import torch_threads
from circuitlab.cot import sweep, sweep_report
from circuitlab.cot.train import TrainConfig

TINY = TrainConfig(num=300, test_num=10, layers=1, d_model=16, heads=2, dropout=0.0,
                   epochs=1, batch_size=32, checkpoint_every=1000, device="cpu")  # fmt: skip


def tiny_profile() -> sweep.Profile:
    plans = (
        sweep.TaskPlan("arithmetic", (2, 3), TINY),
        sweep.TaskPlan("lis", (5,), dataclasses.replace(TINY, num=200)),
    )
    return sweep.Profile("tiny", plans, cot_layers=2, direct_layers=(1, 2), seeds=(1, 2),
                         note="test profile")  # fmt: skip


def test_points_cover_tasks_sizes_variants_and_seeds() -> None:
    pts = sweep.points(tiny_profile())
    assert len(pts) == 3 * 3 * 2  # (2 + 1 sizes) x (2 direct depths + cot) x 2 seeds
    names = {p.name for p in pts}
    assert "arithmetic-n3-cot-L2-s2" in names and "lis-n5-direct-L1-s1" in names
    assert {p.config.task for p in sweep.points(tiny_profile(), ("lis",))} == {"lis"}
    with pytest.raises(CircuitlabError, match="not in profile"):
        sweep.points(tiny_profile(), ("ed",))


def test_sweep_writes_results_csv_plot_and_report(tmp_path: Path) -> None:
    profile = tiny_profile()
    summary = sweep.run_sweep(profile, tmp_path, tasks=("arithmetic",), quiet=True)
    assert len(summary["points"]) == 2 * 3 * 2
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 12
    assert {r["format"] for r in rows} == {"direct", "cot"}
    stored = json.loads((tmp_path / "results.json").read_text())
    agg = {(r["task"], r["size"], r["variant"]): r for r in stored["summary"]}
    assert set(agg) == {("arithmetic", n, v) for n in (2, 3)
                        for v in ("cot", "direct L1", "direct L2")}  # fmt: skip
    for r in stored["summary"]:
        assert r["seeds"] == 2 and r["min"] <= r["answer_accuracy"] <= r["max"]
    png = (tmp_path / "accuracy_vs_size.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    report = (tmp_path / "report.md").read_text()
    assert "| arithmetic | 2 |" in report and "direct L2" in report

    # a rerun trains nothing: every point is done
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("points/*/results.json")}
    sweep.run_sweep(profile, tmp_path, tasks=("arithmetic",), quiet=True)
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("points/*/results.json")}


def test_worker_processes_give_the_same_results_as_one_after_another(tmp_path: Path) -> None:
    profile = tiny_profile()
    with torch_threads(max(1, (os.cpu_count() or 1) // 2)):  # what each worker gets
        serial = sweep.run_sweep(profile, tmp_path / "serial", tasks=("lis",), quiet=True)
    parallel = sweep.run_sweep(profile, tmp_path / "parallel", tasks=("lis",), quiet=True,
                               workers=2)  # fmt: skip
    keys = ("name", "answer_accuracy", "chain_accuracy", "steps", "train_tokens")
    assert [{k: p[k] for k in keys} for p in parallel["points"]] == [
        {k: p[k] for k in keys} for p in serial["points"]
    ]
    with pytest.raises(CircuitlabError, match="workers"):
        sweep.run_sweep(profile, tmp_path / "bad", workers=0)


def test_aggregate_means_over_seeds() -> None:
    base = {"task": "lis", "size": 5, "format": "direct", "layers": 3, "chain_accuracy": 0.0,
            "train_seconds": 1.0}  # fmt: skip
    # the second result predates the official metric: its answer accuracy stands in
    rows = sweep_report.aggregate([{**base, "answer_accuracy": 0.2, "official_accuracy": 0.1},
                            {**base, "answer_accuracy": 0.6}])  # fmt: skip
    assert rows == [{"task": "lis", "size": 5, "variant": "direct L3", "seeds": 2,
                     "answer_accuracy": pytest.approx(0.4), "min": 0.2, "max": 0.6,
                     "chain_accuracy": 0.0, "official_accuracy": pytest.approx(0.35),
                     "train_official_accuracy": None, "train_seconds": 1.0}]  # fmt: skip


def test_profiles_are_well_formed(tmp_path: Path) -> None:
    paper = sweep.get_profile("paper")
    assert paper.direct_layers == (3, 4, 5) and paper.cot_layers == 3
    assert {p.task for p in paper.plans} == {"arithmetic", "equation", "lis", "ed"}
    assert all(p.train.d_model == 256 and p.train.num == 1_000_000 for p in paper.plans)
    assert all(p.train.recipe == "official" and p.train.arch == "official" for p in paper.plans)
    assert next(p for p in paper.plans if p.task == "arithmetic").train.under
    quick = sweep.get_profile("quick")
    assert len(quick.plans) >= 2 and all(len(p.sizes) >= 2 for p in quick.plans)
    with pytest.raises(CircuitlabError, match="unknown profile"):
        sweep.get_profile("huge")
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(CircuitlabError, match="Ray"):
            sweep.run_sweep(tiny_profile(), tmp_path, executor="ray")


def test_worker_processes_report_their_steps_to_the_parent(tmp_path: Path) -> None:
    """A parallel sweep shows training steps as they happen, not a line per finished point:
    each worker's steps reach the parent's progress display over a queue."""
    from circuitlab.core.progress import listen

    events: list[tuple[str, float, float | None]] = []
    with listen(lambda *event: events.append(event)):
        summary = sweep.run_sweep(tiny_profile(), tmp_path, tasks=("lis",), quiet=True,
                                  workers=2)  # fmt: skip
    for point in summary["points"]:
        steps = [(done, total) for name, done, total in events if name.strip() == point["name"]]
        assert steps, f"no step progress from {point['name']}"
        assert steps[-1] == (point["steps"], point["steps"])
    overall = [done for name, done, _ in events if name.startswith("cot sweep")]
    assert overall[-1] == len(summary["points"])


def _comparable(summary: dict) -> list[dict]:
    keys = ("name", "answer_accuracy", "chain_accuracy", "steps", "train_tokens")
    return [{k: p[k] for k in keys} for p in summary["points"]]


def test_the_ray_executor_gives_the_local_executors_results(tmp_path: Path) -> None:
    """A real local Ray cluster (2 CPUs, started and stopped by the sweep) against two local
    worker processes: the same single-thread training, so the same numbers."""
    profile = tiny_profile()
    local = sweep.run_sweep(profile, tmp_path / "local", tasks=("lis",), quiet=True, workers=2)
    ray = sweep.run_sweep(profile, tmp_path / "ray", tasks=("lis",), quiet=True, workers=2,
                          executor="ray")  # fmt: skip
    assert _comparable(ray) == _comparable(local)
    with pytest.raises(CircuitlabError, match="needs --executor ray"):
        sweep.run_sweep(profile, tmp_path / "bad", ray_address="auto")
    assert not (tmp_path / "bad").exists()


KILLABLE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("sweep_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
from circuitlab.cot import sweep, sweep_report
sweep.run_sweep(tests.tiny_profile(), sys.argv[2], tasks=("arithmetic",), quiet=True,
                workers=2, executor="ray")
"""


def test_a_killed_ray_sweep_resumes_point_by_point(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, __file__, str(out)],
                               start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while len(list(out.glob("points/*/results.json"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the cluster it started
    process.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("points/*/results.json")}
    assert 2 <= len(finished) < 12 and not (out / "results.json").exists()
    resumed = sweep.run_sweep(tiny_profile(), out, tasks=("arithmetic",), quiet=True, workers=2,
                              executor="ray")  # fmt: skip
    for name, stamp in finished.items():  # finished points were not trained again
        assert (out / "points" / name / "results.json").stat().st_mtime_ns == stamp
    whole = sweep.run_sweep(tiny_profile(), tmp_path / "whole", tasks=("arithmetic",),
                            quiet=True, workers=2)  # fmt: skip
    assert _comparable(resumed) == _comparable(whole)


SWEEP_FILE = """
name = "positions"
seeds = [3]
cot_layers = 1
direct_layers = [1]
[train]
num = 200
test_num = 8
d_model = 16
heads = 2
dropout = 0.0
epochs = 1
batch_size = 32
checkpoint_every = 1000
device = "cpu"
[[tasks]]
task = "lis"
sizes = [5]
values = 30
[axes]
positions = ["sinusoidal", "alibi"]
"""

EVAL_SIZES = 'eval_sizes = [7]\n'  # top-level key: goes before the first table


def test_a_sweep_file_varies_any_field_as_an_axis(tmp_path: Path) -> None:
    path = tmp_path / "positions.toml"
    path.write_text(EVAL_SIZES + SWEEP_FILE)
    profile = sweep.get_profile(str(path))
    assert profile.eval_sizes == (7,)
    pts = sweep.points(profile)
    assert sorted(p.name for p in pts) == sorted(
        f"lis-n5-{fmt}-L1-s3-positions{pos}"
        for fmt in ("direct", "cot") for pos in ("sinusoidal", "alibi")
    )  # fmt: skip
    assert {p.config.positions for p in pts} == {"sinusoidal", "alibi"}
    assert all(p.config.values == 30 and p.config.d_model == 16 for p in pts)
    with torch_threads(1):
        summary = sweep.run_sweep(profile, tmp_path / "out", quiet=True)
    variants = {r["variant"] for r in summary["summary"]}
    assert variants == {"cot positions=sinusoidal", "cot positions=alibi",
                        "direct L1 positions=sinusoidal", "direct L1 positions=alibi"}  # fmt: skip
    report = (tmp_path / "out" / "report.md").read_text()
    assert "cot positions=alibi" in report and "on 7-size problems" in report
    # every point was also tested on size 7, once: its eval-size7.json feeds the summary
    for point in pts:
        scored = json.loads((tmp_path / "out" / "points" / point.name / "eval-size7.json")
                            .read_text())  # fmt: skip
        assert scored["size"] == 7 and scored["trained_size"] == 5
    by_variant = {r["variant"]: r for r in summary["summary"]}
    assert 0.0 <= by_variant["cot positions=alibi"]["official_accuracy_at_7"] <= 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[axes]", "[axes]\nwidth = [1]"), "width is not a TrainConfig field"),
        (("[axes]", "[axes]\nsize = [5, 6]"), "cannot vary size"),
        (('positions = ["sinusoidal", "alibi"]', 'd_model = ["wide"]'), "d_model"),
        (("[train]", "[train]\nlayers = 2"), "cannot set layers"),
        (('name = "positions"', "colour = 1"), "unknown key"),
        (("sizes = [5]", "sizes = 5"), "sizes must be a list"),
        (('positions = ["sinusoidal", "alibi"]', 'positions = ["rope"]'), "positions must be"),
        (('name = "positions"', "eval_sizes = 7"), "eval_sizes must be a list"),
        (('name = "positions"', "eval_sizes = [1]"), "size"),
        (('name = "positions"', "eval_sizes = [40]"), "values"),  # numbers below 30 at n=40
        (("seeds = [3]", "seeds = 3"), "seeds must be a list of integers"),
        (("cot_layers = 1", 'cot_layers = "x"'), "cot_layers must be an integer"),
    ],
)
def test_a_bad_sweep_file_is_one_clear_error(tmp_path: Path, change, message) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SWEEP_FILE.replace(*change))
    with pytest.raises(CircuitlabError, match=message):
        sweep.get_profile(str(path))


def test_eval_sizes_with_learned_positions_is_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "learned.toml"
    path.write_text(EVAL_SIZES + SWEEP_FILE.replace('"sinusoidal", "alibi"', '"learned"'))
    with pytest.raises(CircuitlabError, match="eval_sizes needs positions sinusoidal or alibi"):
        sweep.get_profile(str(path))


def test_axes_over_recipe_fields_are_refused_under_the_official_recipe(tmp_path: Path) -> None:
    """replace() of a resolved official config cannot undo the recipe: a point named
    batching-length would train with shuffled batches."""
    path = tmp_path / "recipe.toml"
    text = SWEEP_FILE.replace("[train]", '[train]\nrecipe = "official"')
    path.write_text(text.replace('positions = ["sinusoidal", "alibi"]', 'batching = ["length"]'))
    with pytest.raises(CircuitlabError, match="batching under recipe official"):
        sweep.get_profile(str(path))
