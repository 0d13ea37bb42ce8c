"""`make demo`: every system on the embedded defaults, one report a researcher can read.

Each stage writes its own run directory under OUT (with its report.md, plots and
results.json) and a done marker, so an interrupted demo resumes where it stopped. The last
step combines the stage reports into OUT/report.html (self-contained) and OUT/report.md.
Like the CLI, this module sits above the systems and may import all of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_json, atomic_write_text, read_json
from circuitlab.core.progress import listen, stage_bars
from circuitlab.core.runs import RunDir

PRESETS = ("full", "smoke")


@dataclass(frozen=True)
class DemoSettings:
    seed: int = option(0, "Seed for everything the demo draws.")
    num: int = option(10_000, "Training examples per dataset in the cot-data stage.")
    preset: str = option(
        "full",
        "full: the demo as the README describes it (its time there); smoke: every stage at a "
        "toy size in a few minutes, to check an install (its numbers mean nothing).",
    )

    def __post_init__(self) -> None:
        require(self.preset in PRESETS, f"unknown preset {self.preset!r}: use {', '.join(PRESETS)}")
        require(self.num >= 1, f"num must be at least 1, got {self.num}")

    @property
    def smoke(self) -> bool:
        return self.preset == "smoke"


def _cot_data(out: Path, settings: DemoSettings) -> None:
    from circuitlab.cot.demo import run_data_demo

    num = min(settings.num, 200) if settings.smoke else settings.num
    run_data_demo(out, num=num, seed=settings.seed)


def _cot_sweep(out: Path, settings: DemoSettings) -> None:
    from circuitlab.cot.sweep import get_profile, run_sweep

    profile = get_profile("demo")
    if settings.smoke:
        plans = tuple(
            dataclasses.replace(
                plan, sizes=plan.sizes[:1],
                train=dataclasses.replace(plan.train, num=200, test_num=20, epochs=1),
            )
            for plan in profile.plans
        )  # fmt: skip
        profile = dataclasses.replace(profile, name="demo-smoke", plans=plans)
    run_sweep(profile, out, workers=2)


def _circuits_reference(out: Path, settings: DemoSettings) -> None:
    """IOI patching reference on SmolLM2: 16 prompt pairs keep it to minutes on a CPU."""
    from circuitlab.circuits.reference import ReferenceConfig, run_reference

    num = 2 if settings.smoke else 16
    run_reference(ReferenceConfig(task="ioi", num=num, seed=settings.seed), out)


def _circuits_discover(out: Path, settings: DemoSettings) -> None:
    """SAE method and baselines on 100 IOI pairs, scored against the reference above."""
    from circuitlab.circuits.discover import DiscoveryConfig, run_discover

    size = {"num": 6, "epochs": 20} if settings.smoke else {"num": 100}
    config = DiscoveryConfig(task="ioi", seed=settings.seed, **size)
    reference = out.parent / "circuits-reference" / "reference.json"
    run_discover(config, out, reference=str(reference))


def _circuits_evaluate(out: Path, settings: DemoSettings) -> None:
    """Every method against the reference over 3 seeds: one table and the ROC curves."""
    from circuitlab.circuits.evaluate import EvaluateConfig, run_evaluate

    reference = out.parent / "circuits-reference" / "reference.json"
    size = (
        {"seeds": 1, "num": 6, "patch_num": 1, "epochs": 20}
        if settings.smoke
        else {"seeds": 3, "num": 100, "patch_num": 4}
    )
    config = EvaluateConfig(references=(("ioi", str(reference)),), task_seed=settings.seed,
                            **size)  # fmt: skip
    run_evaluate(config, out)


def _analog(out: Path, settings: DemoSettings) -> None:
    """Textbook slice -> nodes -> distilled QA -> SFT / NSC-SFT (LoRA) -> MCQ and drift."""
    from circuitlab.analog.pipeline import PipelineConfig, run_pipeline

    config = (
        PipelineConfig(max_nodes=1, steps=1, lambdas=(0.0, 0.1), mcq_limit=4, drift_tokens=256)
        if settings.smoke
        else PipelineConfig()
    )
    with stage_bars() as stage:
        run_pipeline(out, config, stage=stage)


STAGES: dict[str, Callable[[Path, DemoSettings], None]] = {
    "cot-data": _cot_data,
    "cot-sweep": _cot_sweep,
    "circuits-reference": _circuits_reference,
    "circuits-discover": _circuits_discover,
    "circuits-evaluate": _circuits_evaluate,
    "analog": _analog,
}


def run_demo(
    out: str | Path, settings: DemoSettings = DemoSettings(), only: tuple[str, ...] = ()
) -> Path:
    """Run the stages not yet done, then rebuild the combined report; return its path."""
    from circuitlab.core.report import build_report

    root = Path(out)
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        raise CircuitlabError(
            f"unknown demo stage(s) {', '.join(unknown)}: use {', '.join(STAGES)}"
        )
    defaults = dataclasses.asdict(DemoSettings())  # a demo run before `preset` existed
    run = RunDir.open(root, {"demo": "all", **dataclasses.asdict(settings)}, defaults)
    for name, stage in STAGES.items():
        if only and name not in only:
            continue
        target = root / name
        if not run.is_done(name):
            print(f"== demo stage {name} -> {target}", flush=True)
            watch = _Silence()
            with listen(watch):
                run.run_stage(name, lambda stage=stage, target=target: stage(target, settings))
            _merged(root / "silences.json", {name: watch.longest()})
    # the report covers every finished stage, also those of earlier `--stage` runs, and
    # timings.json keeps their times
    stage_dirs = [root / name for name in STAGES if run.is_done(name)]
    silences = read_json(root / "silences.json") if (root / "silences.json").exists() else {}
    summary = _write_summary(root / "summary", root, run.timings(), silences, settings)
    report = root / "report.html"
    build_report([summary, *stage_dirs], report, title="circuitlab demo", command="make demo")
    return report


def _merged(path: Path, new: dict[str, float]) -> dict[str, float]:
    """The stage values in `path`, updated with `new` (a resumed demo keeps earlier ones)."""
    merged = {**(read_json(path) if path.exists() else {}), **new}
    atomic_write_json(path, merged)
    return merged


class _Silence:
    """A progress listener that measures a stage's longest stretch without progress
    (start to first update, between updates, last update to the end)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.gap = 0.0

    def __call__(self, description: str, completed: float, total: float | None) -> None:
        now = time.perf_counter()
        self.gap = max(self.gap, now - self.last)
        self.last = now

    def longest(self) -> float:
        return max(self.gap, time.perf_counter() - self.last)


CAVEATS = """\
- cot: the quick profile's arithmetic slice (d_model 128, 16 heads, 25k problems, 10
  epochs, one seed, sizes 2 and 3), not the paper's sizes 4-6 or its d_model 256 / 1e6
  problems / 100 epochs.
- circuits: the patching reference uses 16 prompt pairs and a 5% effect threshold; it is an
  ablation-importance circuit, not a hand-found one, and it rewards early heads whose removal
  breaks any prompt, which the SAE method (reading positive-vs-negative differences) does not
  see. The paper's numbers are for GPT-2 small against literature circuits.
- analog: a 135M model distils 7-8 QA records and trains 8 LoRA steps per lambda: it shows
  the machinery and the direction of the drift trade-off, not the paper's accuracy gains; the
  MCQ probe is a self-written 60-question set, not AMSBench-TQA.
"""

# What each paper reports for the demo's headline (shared/reference/): cot, the official
# logs' arithmetic (3 layers); circuits, GPT-2 small against literature circuits; analog,
# Qwen2.5-32B on AMSBench-TQA.
PAPER_FINDINGS = {
    "cot": "arithmetic n=4 / n=6: CoT 1.000 / 1.000, direct 0.64-0.80 / 0.20-0.31",
    "circuits": "IOI on GPT-2 small: SAE node AUC 0.853, HISP 0.699",
    "analog": "AMSBench-TQA: base 69.37%, NSC-SFT 85.04%; the KL term adds 2.71 points",
}


def findings(root: Path) -> list[tuple[str, str, str]]:
    """(system, measured here, the paper's) for each system whose demo stage has finished."""
    rows = []
    sweep = root / "cot-sweep" / "results.json"
    if sweep.exists():
        summary = read_json(sweep)["summary"]
        size = max(r["size"] for r in summary)
        at = {r["variant"]: r["answer_accuracy"] for r in summary if r["size"] == size}
        direct = ", ".join(f"{v} {a:.3f}" for v, a in at.items() if v != "cot")
        task = summary[0]["task"]
        rows.append(("cot", f"{task} n={size}: CoT {at.get('cot', float('nan')):.3f}, "
                     f"{direct}", PAPER_FINDINGS["cot"]))  # fmt: skip
    evaluate = root / "circuits-evaluate" / "results.json"
    if evaluate.exists():
        table = read_json(evaluate)["table"]
        auc = {r["method"]: r["auc"] for r in table}
        # activation patching is how the reference itself is made: not a fair "best"
        others = ("random", "activation")
        baselines = {m: a for m, a in auc.items() if not m.startswith("sae") and m not in others}
        best = max(baselines, key=baselines.__getitem__) if baselines else None
        measured = f"IOI on SmolLM2: SAE node AUC {auc.get('sae', float('nan')):.3f}"
        if best:
            measured += f", best gradient baseline {best} {baselines[best]:.3f}"
        if "activation" in auc:
            measured += f", activation patching (the reference's method) {auc['activation']:.3f}"
        if "random" in auc:
            measured += f", random {auc['random']:.3f}"
        rows.append(("circuits", measured, PAPER_FINDINGS["circuits"]))
    analog = root / "analog" / "results.json"
    if analog.exists():
        parts = []
        for r in read_json(analog)["rows"]:
            name = "base" if r["lambda"] is None else f"lambda {r['lambda']:g}"
            parts.append(f"{name} acc {r['accuracy']:.2f} KL {r['general_kl']:.4f}")
        rows.append(("analog", "MCQ accuracy and general-text drift (KL): " + "; ".join(parts),
                     PAPER_FINDINGS["analog"]))  # fmt: skip
    return rows


def _write_summary(
    out: Path,
    root: Path,
    timings: dict[str, float],
    silences: dict[str, float],
    settings: DemoSettings,
) -> Path:
    """The first report section: the findings against the papers, then wall time per stage
    and the caveats of the small defaults."""
    lines = ["# Demo findings", ""]
    if settings.smoke:
        lines += ["Smoke preset: every stage at a toy size; the numbers below mean nothing.", ""]
    rows = findings(root)
    if rows:
        lines += ["| system | measured here | the paper |", "| --- | --- | --- |"]
        lines += [f"| {system} | {here} | {paper} |" for system, here, paper in rows]
    else:
        lines.append("No system's stage has finished yet.")
    lines += ["", "## Stages", "", "| stage | wall time | longest wait for progress |",
              "| --- | ---: | ---: |"]  # fmt: skip
    for name in STAGES:
        if name in timings:
            silence = f"{silences[name]:.0f} s" if name in silences else "-"
            lines.append(f"| {name} | {timings[name] / 60:.1f} min | {silence} |")
    lines.append(f"| total | {sum(timings.values()) / 60:.1f} min | |")
    lines += ["", "## Caveats of the small defaults", "", CAVEATS]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out
