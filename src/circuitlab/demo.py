"""`make demo`: every system on the embedded defaults, one report a researcher can read.

Each stage writes its own run directory under OUT (with its report.md, plots and
results.json) and a done marker, so an interrupted demo resumes where it stopped. The last
step combines the stage reports into OUT/report.html (self-contained) and OUT/report.md.
Like the CLI, this module sits above the systems and may import all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_text
from circuitlab.core.runs import RunDir


@dataclass(frozen=True)
class DemoSettings:
    seed: int = 0
    num: int = 10_000  # training examples per cot dataset in the cot-data stage


def _cot_data(out: Path, settings: DemoSettings) -> None:
    from circuitlab.cot.demo import run_data_demo

    run_data_demo(out, num=settings.num, seed=settings.seed)


def _cot_sweep(out: Path, settings: DemoSettings) -> None:
    from circuitlab.cot.sweep import get_profile, run_sweep

    run_sweep(get_profile("demo"), out, workers=2)


def _circuits_reference(out: Path, settings: DemoSettings) -> None:
    """IOI patching reference on SmolLM2: 16 prompt pairs keep it to minutes on a CPU."""
    from circuitlab.circuits.reference import ReferenceConfig, run_reference

    run_reference(ReferenceConfig(task="ioi", num=16, seed=settings.seed), out)


def _circuits_discover(out: Path, settings: DemoSettings) -> None:
    """SAE method and baselines on 100 IOI pairs, scored against the reference above."""
    from circuitlab.circuits.methods import DiscoveryConfig, run_discover

    config = DiscoveryConfig(task="ioi", num=100, seed=settings.seed)
    reference = out.parent / "circuits-reference" / "reference.json"
    run_discover(config, out, reference=str(reference))


def _circuits_evaluate(out: Path, settings: DemoSettings) -> None:
    """Every method against the reference over 3 seeds: one table and the ROC curves."""
    from circuitlab.circuits.evaluate import EvaluateConfig, run_evaluate

    reference = out.parent / "circuits-reference" / "reference.json"
    config = EvaluateConfig(references=(("ioi", str(reference)),), seeds=3, num=100,
                            task_seed=settings.seed, patch_num=4)  # fmt: skip
    run_evaluate(config, out)


def _analog(out: Path, settings: DemoSettings) -> None:
    """Textbook slice -> nodes -> distilled QA -> SFT / NSC-SFT (LoRA) -> MCQ and drift."""
    from circuitlab.analog.pipeline import PipelineConfig, run_pipeline

    run_pipeline(out, PipelineConfig())


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
    run = RunDir.open(root, {"demo": "all", **dataclasses.asdict(settings)})
    for name, stage in STAGES.items():
        if only and name not in only:
            continue
        target = root / name
        if not run.is_done(name):
            print(f"== demo stage {name} -> {target}", flush=True)
        run.run_stage(name, lambda stage=stage, target=target: stage(target, settings))
    # the report covers every finished stage, also those of earlier `--stage` runs, and
    # timings.json keeps their times
    stage_dirs = [root / name for name in STAGES if run.is_done(name)]
    timings = run.timings()
    summary = _write_summary(root / "summary", timings)
    report = root / "report.html"
    build_report([summary, *stage_dirs], report, title="circuitlab demo", command="make demo")
    return report


CAVEATS = """\
- cot: the quick profile's arithmetic slice (d_model 128, 16 heads, 25k problems, one seed,
  sizes 2 and 3), not the paper's sizes 4-6 or its d_model 256 / 1e6 problems / 100 epochs.
- circuits: the patching reference uses 16 prompt pairs and a 5% effect threshold; it is an
  ablation-importance circuit, not a hand-found one, and it rewards early heads whose removal
  breaks any prompt, which the SAE method (reading positive-vs-negative differences) does not
  see. The paper's numbers are for GPT-2 small against literature circuits.
- analog: a 135M model distils 7-8 QA records and trains 8 LoRA steps per lambda: it shows
  the machinery and the direction of the drift trade-off, not the paper's accuracy gains; the
  MCQ probe is a self-written 60-question set, not AMSBench-TQA.
"""


def _write_summary(out: Path, timings: dict[str, float]) -> Path:
    """A first report section: wall time per stage and the caveats of the small defaults."""
    lines = ["# Demo summary", "", "| stage | wall time |", "| --- | ---: |"]
    for name in STAGES:
        if name in timings:
            lines.append(f"| {name} | {timings[name] / 60:.1f} min |")
    lines.append(f"| total | {sum(timings.values()) / 60:.1f} min |")
    lines += ["", "Caveats of the small defaults:", "", CAVEATS]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out
