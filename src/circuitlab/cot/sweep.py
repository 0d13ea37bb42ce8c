"""The paper's experiment as one command: tasks x sizes x {CoT, direct at several depths} x seeds.

Each point is an ordinary training run in `OUT/points/<name>/`, so a killed sweep resumes
point by point (and inside a point from its last checkpoint). When all points are done the
sweep writes results.json (every point, plus mean/min/max over seeds), results.csv and
accuracy_vs_size.png, the picture of the paper's Figure 3: CoT flat near 100%, direct
falling with problem size.

Points run one after another by default. `workers=N` runs N points at once in local
processes, each with an equal share of the CPU threads: the quick profile's small models keep
one core busy far better than they keep two busy, so two single-thread workers finish a CPU
sweep sooner. On a GPU keep one worker. `executor="ray"` fans points out over a Ray cluster
(`pip install 'circuitlab[ray]'`; `ray_address` names a running cluster, else one is started
on this machine for the run). Both go through core.executor.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.core.config import config_to_dict, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.executor import Unit, check_executor, run_units
from circuitlab.core.io import atomic_write_json, atomic_write_text, read_json
from circuitlab.core.runs import RunDir
from circuitlab.cot.config import OFFICIAL_RECIPE
from circuitlab.cot.sweep_report import aggregate, plot_accuracy, report_markdown, to_csv
from circuitlab.cot.train import TrainConfig, train


@dataclass(frozen=True)
class TaskPlan:
    """One task's part of a sweep: its sizes and the training settings for all its points."""

    task: str
    sizes: tuple[int, ...]
    train: TrainConfig  # task/size/format/layers/seed are filled in per point


@dataclass(frozen=True)
class Profile:
    name: str
    plans: tuple[TaskPlan, ...]
    cot_layers: int
    direct_layers: tuple[int, ...]
    seeds: tuple[int, ...]
    note: str
    # (TrainConfig field, values): every point is trained once per combination of values
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # sizes every point is also tested on after training (length generalisation)
    eval_sizes: tuple[int, ...] = ()


def _paper() -> Profile:
    """The official configuration (reference/cot.md): a multi-GPU job, days on one GPU."""
    base = TrainConfig(
        num=1_000_000, test_num=100_000, d_model=256, heads=4, dropout=0.1, epochs=100,
        batch_size=512, lr=1e-4, weight_decay=0.01, warmup=0.05, schedule="linear",
        checkpoint_every=2_000, log_every=100, eval_every=10, eval_examples=2_000,
        recipe="official",
    )  # fmt: skip
    plans = (
        # the documented arithmetic commands use --under (TrainConfig.under)
        TaskPlan("arithmetic", (4, 5, 6), dataclasses.replace(base, under=True)),
        TaskPlan("equation", (3, 4, 5), base),
        TaskPlan("lis", (50, 80, 100), base),
        TaskPlan("ed", (12, 16, 20), base),
    )
    return Profile(
        "paper",
        plans,
        cot_layers=3,
        direct_layers=(3, 4, 5),
        seeds=(2021, 2022, 2023, 2024),
        note="official configuration and recipe: d_model 256, 4 heads, 1e6 examples, "
        "100 epochs, batch 512, AdamW 1e-4; a GPU job (about 5 GPU-days for all 192 points)",
    )


def _quick() -> Profile:
    """Scaled down to finish on a 2-core CPU in under 30 minutes and still show the effect.

    Smaller problems, a d_model-128 model without dropout, a higher learning rate and a
    few thousand steps. Direct models get the same data and epochs as CoT models, which is
    less compute (their sequences are shorter), as in the paper.

    16 heads of 8 dimensions rather than the paper's 4 of 64: the errors a 4-head model made
    on arithmetic n=3 were positional (it reduced a valid operation, then copied the wrong
    neighbour into the next line). After 10 epochs on n=3, CoT reached 84% with 4 heads
    (learned positions: no better), 94% with 8 and 96% with 16, at nearly the same cost.

    LIS questions use numbers below 50 rather than the official 250. The official range suits
    n=50-100; at n=8-12 a question holds a few of 240 values, each seen rarely, and the
    CoT model's errors were dp values off by one after comparing close numbers (204 vs
    206): 95.6% / 90.0% CoT at n=8 / 12. With 100 values CoT reached 98.0% / 98.2%, with 50
    100% / 99.8%, while direct still fell with size (74% -> 58% at 250, 90% -> 77% at 50;
    one seed each, the same training otherwise). LIS sizes are 8 and 16 because at n=12 a
    5-layer direct model still reached 91%; at n=16 it fell to 77% (GPU check, 30k
    problems). 27k problems keep the whole profile inside 30 minutes.
    """
    base = TrainConfig(
        num=30_000, test_num=500, d_model=128, heads=16, dropout=0.0, epochs=6, batch_size=32,
        lr=1e-3, weight_decay=0.01, warmup=0.05, schedule="cosine",
        checkpoint_every=500, log_every=50,
    )  # fmt: skip
    plans = (
        # arithmetic CoT needs longer than LIS to get past its plateau (learning the mod-11
        # tables): 4-head models stopped at 68% (6 epochs) and 84% (10) on n=3
        TaskPlan(
            "arithmetic", (2, 3), dataclasses.replace(base, num=25_000, mix_smaller=0.3, epochs=12)
        ),
        TaskPlan("lis", (8, 16), dataclasses.replace(base, num=27_000, values=50)),
    )
    return Profile(
        "quick",
        plans,
        cot_layers=3,
        direct_layers=(3, 5),
        seeds=(2021,),
        note="scaled down for a 2-core CPU: arithmetic n=2,3 (25k problems, 30% of them "
        "smaller as with the official --under, 12 epochs) and LIS n=8,16 (27k problems with "
        "numbers below 50 instead of 250, 6 epochs); d_model 128, 16 heads, no dropout, "
        "batch 32, AdamW 1e-3 with cosine decay, one seed",
    )


def _demo() -> Profile:
    """The slice `make demo` runs: the quick profile's arithmetic, direct at one depth, for
    10 epochs instead of 12, so that the whole demo fits 15 minutes on a 2-core CPU."""
    quick = _quick()
    arithmetic = next(p for p in quick.plans if p.task == "arithmetic")
    shorter = dataclasses.replace(arithmetic.train, epochs=10)
    arithmetic = dataclasses.replace(arithmetic, train=shorter)
    return Profile(
        "demo", (arithmetic,), cot_layers=3, direct_layers=(3,), seeds=quick.seeds,
        note="the demo slice of the quick profile: arithmetic n=2,3, CoT vs direct at 3 "
        "layers, d_model 128, 16 heads, 25k examples, 10 epochs (quick: 12)",
    )  # fmt: skip


PROFILES = {"quick": _quick, "paper": _paper, "demo": _demo}


def get_profile(name: str) -> Profile:
    """A named profile, or a sweep described in a TOML file (`load_profile`)."""
    if name.endswith(".toml"):
        return load_profile(Path(name))
    if name not in PROFILES:
        raise CircuitlabError(
            f"unknown profile {name!r}: use one of {', '.join(PROFILES)} or a .toml file"
        )
    return PROFILES[name]()


# Fields a point's place in the sweep sets; an axis or [train] cannot.
_STRUCTURAL = ("task", "size", "format", "layers", "seed")
_PROFILE_KEYS = {
    "name", "note", "seeds", "cot_layers", "direct_layers", "train", "tasks", "axes",
    "eval_sizes",
}  # fmt: skip


def load_profile(path: Path) -> Profile:
    """A custom sweep: [train] holds TrainConfig fields for every point, [[tasks]] each
    task's `sizes` (and its own overrides), [axes] any other TrainConfig field with a list
    of values (d_model = [64, 128], positions = ["sinusoidal", "alibi"], recipe = [...]).
    Every field name and value is checked before anything runs."""
    from circuitlab.core.config import checked_values, read_toml

    data = read_toml(path)
    where = f"sweep file {path}"
    unknown = sorted(set(data) - _PROFILE_KEYS)
    require(not unknown, f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"use {', '.join(sorted(_PROFILE_KEYS))}")  # fmt: skip
    names = {f.name for f in dataclasses.fields(TrainConfig)}

    def fields(table: Any, what: str) -> dict[str, Any]:
        require(isinstance(table, dict), f"{where}: {what} must be a table")
        fixed = sorted(set(table) & set(_STRUCTURAL))
        require(not fixed, f"{where}: {what} cannot set {', '.join(fixed)} (the sweep does)")
        return checked_values(TrainConfig, table)

    base = fields(data.get("train", {}), "[train]")
    tasks = data.get("tasks")
    require(isinstance(tasks, list) and tasks, f"{where}: needs [[tasks]] with task and sizes")
    plans = []
    for i, entry in enumerate(tasks):
        require(isinstance(entry, dict) and {"task", "sizes"} <= set(entry),
                f"{where}: [[tasks]] {i + 1} needs task and sizes")  # fmt: skip
        sizes = entry["sizes"]
        require(isinstance(sizes, list) and sizes and all(isinstance(n, int) for n in sizes),
                f"{where}: [[tasks]] {i + 1}: sizes must be a list of integers")  # fmt: skip
        extra = {k: v for k, v in entry.items() if k not in ("task", "sizes")}
        config = TrainConfig(**{**base, **fields(extra, f"[[tasks]] {i + 1}"),
                                "task": entry["task"], "size": sizes[0]})  # fmt: skip
        plans.append(TaskPlan(entry["task"], tuple(sizes), config))
    axes = fields_of_axes(data.get("axes", {}), where, names)
    official = [p.task for p in plans if p.train.recipe == "official"]
    recipe_axes = sorted({n for n, _ in axes} & {"recipe", *OFFICIAL_RECIPE})
    require(not (official and recipe_axes),
            f"{where}: [axes] {', '.join(recipe_axes)} under recipe official: the recipe "
            "fixes these; vary recipe from the project recipe instead")  # fmt: skip
    profile = Profile(
        _text(data, "name", path.stem, where),
        tuple(plans),
        cot_layers=_ints(data, "cot_layers", [3], where, one=True)[0],
        direct_layers=_ints(data, "direct_layers", [3], where),
        seeds=_ints(data, "seeds", [2021], where),
        note=_text(data, "note", f"custom sweep from {path.name}", where),
        axes=tuple(axes),
        eval_sizes=_eval_sizes(data.get("eval_sizes", []), where),
    )
    for point in points(profile):  # builds (so validates) every point before anything runs
        _check_eval_sizes(point.config, profile.eval_sizes, where)
    return profile


def _text(data: dict[str, Any], key: str, default: str, where: str) -> str:
    value = data.get(key, default)
    require(isinstance(value, str), f"{where}: {key} must be a string")
    return value


def _ints(
    data: dict[str, Any], key: str, default: list[int], where: str, one: bool = False
) -> tuple[int, ...]:
    """A non-empty list of integers (`one`: a single integer) from the sweep file."""
    value = data.get(key, default[0] if one else default)
    values = [value] if one else value
    ok = isinstance(values, list) and values and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )  # fmt: skip
    require(ok, f"{where}: {key} must be {'an integer' if one else 'a list of integers'}")
    return tuple(values)


def _eval_sizes(values: Any, where: str) -> tuple[int, ...]:
    ok = isinstance(values, list) and all(isinstance(v, int) for v in values)
    require(ok, f"{where}: eval_sizes must be a list of integers")
    return tuple(values)


def _check_eval_sizes(config: TrainConfig, sizes: tuple[int, ...], where: str) -> None:
    """What `rescore` would refuse after training, refused before it."""
    if not sizes:
        return
    from circuitlab.cot.tasks import get_task

    task, arg = get_task(config.task), config.data.task_arg
    require(config.positions != "learned",
            f"{where}: eval_sizes needs positions sinusoidal or alibi, not learned")  # fmt: skip
    require(not config.data_file, f"{where}: eval_sizes draws fresh problems: not with --data")
    for size in sizes:
        require(task.vocab(size, arg) == task.vocab(config.size, arg),
                f"{where}: eval_sizes {size}: {task.name}'s vocabulary differs there")  # fmt: skip
        # the data fresh_test draws: DataConfig checks size and value range
        dataclasses.replace(config.data, size=size, num=1, test_num=0, under=False,
                            corrupt_rate=0.0)  # fmt: skip


def fields_of_axes(table: Any, where: str, names: set[str]) -> list[tuple[str, tuple[Any, ...]]]:
    """[axes] as (field, values), each value checked as that TrainConfig field's type."""
    from circuitlab.core.config import checked_values

    require(isinstance(table, dict), f"{where}: [axes] must be a table")
    out = []
    for name, values in table.items():
        require(name in names, f"{where}: [axes] {name} is not a TrainConfig field")
        require(name not in _STRUCTURAL, f"{where}: [axes] cannot vary {name} (the sweep does)")
        require(isinstance(values, list) and values, f"{where}: [axes] {name} must be a list")
        checked = tuple(checked_values(TrainConfig, {name: v})[name] for v in values)
        out.append((name, checked))
    return out


@dataclass(frozen=True)
class Point:
    config: TrainConfig
    axes: tuple[tuple[str, Any], ...] = ()  # this point's value of each sweep axis

    @property
    def name(self) -> str:
        c = self.config
        tail = "".join(f"-{k}{v}" for k, v in self.axes)
        return f"{c.task}-n{c.size}-{c.format}-L{c.layers}-s{c.seed}{tail}"


def points(profile: Profile, tasks: tuple[str, ...] = (), device: str | None = None) -> list[Point]:
    """Every point of the sweep, in the order they run (cheap direct runs first per size)."""
    known = {p.task for p in profile.plans}
    unknown = sorted(set(tasks) - known)
    require(not unknown, f"task(s) {', '.join(unknown)} not in profile {profile.name}: "
            f"it has {', '.join(sorted(known))}")  # fmt: skip
    out = []
    for plan in profile.plans:
        if tasks and plan.task not in tasks:
            continue
        for size in plan.sizes:
            for seed in profile.seeds:
                variants = [("direct", layers) for layers in profile.direct_layers]
                variants.append(("cot", profile.cot_layers))
                for fmt, layers in variants:
                    config = dataclasses.replace(
                        plan.train, task=plan.task, size=size, format=fmt, layers=layers,
                        seed=seed, **({"device": device} if device else {}),
                    )  # fmt: skip
                    names = [name for name, _ in profile.axes]
                    for combo in itertools.product(*(values for _, values in profile.axes)):
                        axes = tuple(zip(names, combo, strict=True))
                        out.append(Point(dataclasses.replace(config, **dict(axes)), axes))
    return out


def run_sweep(
    profile: Profile,
    out: str | Path,
    *,
    tasks: tuple[str, ...] = (),
    executor: str = "local",
    device: str | None = None,
    quiet: bool = False,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every point, then aggregate. Returns what results.json holds.

    The points run through core.executor: workers=1 one after another in this process,
    workers=N in N local processes with cpu_count // N torch threads each, or as Ray tasks.
    """
    todo = points(profile, tasks, device)
    root = Path(out)
    units = [
        Unit(p.name, _train_point, (p.config, str(root / "points" / p.name), profile.eval_sizes),
             cost=_cost(p.config)[0], gpus=1.0 if p.config.device in ("cuda", "auto") else 0.0)
        for p in todo
    ]  # fmt: skip
    check_executor(executor, workers, ray_address)  # before anything is written
    RunDir.open(root, {"profile": profile.name, "tasks": list(tasks) or "all"})
    results = run_units(
        units, title="cot sweep", executor=executor, workers=workers, ray_address=ray_address,
        show=not quiet, summarize=_point_line,
    )  # fmt: skip
    results = [{**r, **({"axes": dict(p.axes)} if p.axes else {})}
               for p, r in zip(todo, results, strict=True)]  # fmt: skip
    return write_summary(profile, root, todo, results)


def _train_point(
    config: TrainConfig,
    path: str,
    eval_sizes: tuple[int, ...] = (),
    *,
    progress: Callable[[float, float], None],
) -> dict[str, Any]:
    """Train (or resume) one point, then test it on each of `eval_sizes` (each kept in
    the point's eval-sizeM.json, so a resumed sweep scores a size once)."""
    result = train(config, path, resume=True, quiet=True, on_step=progress)
    from circuitlab.cot.rescore import eval_path, rescore

    at_size = {}
    for size in eval_sizes:
        done = eval_path(path, size)
        scored = read_json(done) if done.exists() else None
        if scored is None or scored.get("fresh_problems") != config.test_num:
            # (a `cot eval --size` of another count wrote the same file: score it anew)
            scored = rescore(path, size=size, test_num=config.test_num, device=config.device)
        at_size[str(size)] = scored["official_accuracy"]
    return {**result, "at_size": at_size} if at_size else result


def _point_line(unit: Unit, result: dict[str, Any]) -> str:
    return (f"{unit.name}: accuracy {result['answer_accuracy']:.3f} "
            f"in {result['train_seconds']:.0f} s")  # fmt: skip


def _cost(config: TrainConfig) -> tuple[float, int]:
    """A rough relative cost of a point, to schedule long ones first: CoT sequences are
    about twice as long as direct ones, and within a task bigger sizes take longer."""
    length = 2.0 if config.format == "cot" else 1.0
    return config.num * config.epochs * config.layers * length, config.size


def write_summary(
    profile: Profile, root: Path, todo: list[Point], results: list[dict[str, Any]]
) -> dict[str, Any]:
    rows = aggregate(results)
    summary = {
        "profile": profile.name,
        "note": profile.note,
        "points": [{"name": p.name, **r} for p, r in zip(todo, results, strict=True)],
        "summary": rows,
        "configs": {p.name: config_to_dict(p.config) for p in todo},
    }
    atomic_write_json(root / "results.json", summary)
    atomic_write_text(root / "results.csv", to_csv(summary["points"]))
    plot_accuracy(rows, root / "accuracy_vs_size.png", profile.name)
    atomic_write_text(root / "report.md", report_markdown(profile, rows))
    return summary
