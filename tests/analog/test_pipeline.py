"""`analog run` wiring on a tiny model: stages skip when done, report and plot are written."""

from __future__ import annotations

import json
import shutil

import pytest

from circuitlab.analog.pipeline import PipelineConfig, run_pipeline
from circuitlab.core.config import config_to_dict
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.runs import RunDir

# one torch thread: on a small shared CPU a second thread mostly waits
pytestmark = pytest.mark.usefixtures("one_thread")


def test_pipeline_trains_evaluates_and_reports_then_resumes_for_free(
    tiny_model_dir, qa_file, tmp_path
):
    config = PipelineConfig(
        model=str(tiny_model_dir), lambdas=(0.0, 1.0), steps=3, max_length=96, lora_layers=1,
        mcq_limit=6, threads=1,
    )  # fmt: skip
    out = tmp_path / "run"
    run = RunDir.open(out, config_to_dict(config))
    # the tiny random model cannot distil, so the first two stages are handed in as done
    (out / "distill").mkdir()
    shutil.copy(qa_file, out / "distill" / "qa.jsonl")
    (out / "distill" / "results.json").write_text(
        json.dumps({"nodes_processed": 12, "qa_records": 12, "accepted": 9})
    )
    run.mark_done("nodes")
    run.mark_done("distill")
    stages = []
    report = run_pipeline(out, config, stage=lambda name, total: stages.append(name) or (
        lambda n: None), log=lambda line: None)  # fmt: skip
    assert stages == [
        "SFT lambda=0", "NSC-SFT lambda=1", "evaluate base", "evaluate l0", "evaluate l1",
    ]  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert rows["base"]["general_kl"] == 0 and rows["base"]["n"] == 6
    assert rows["SFT"]["general_kl"] > 0 and rows["NSC-SFT"]["train_steps"] == 3
    assert rows["SFT"]["train_ce_final"] < rows["SFT"]["train_ce_first"]
    drift = json.loads((out / "eval" / "l1.json").read_text())["drift"]
    assert drift["max_tokens"] == config.drift_tokens >= drift["tokens"] > 0  # the cap is used
    text = report.read_text()
    assert "| SFT | 0 |" in text and "| NSC-SFT | 1 |" in text and "tradeoff.png" in text
    # each fine-tuned model against the base, paired on the same six questions
    assert "vs_base" not in rows["base"]
    for model in ("SFT", "NSC-SFT"):
        vs = rows[model]["vs_base"]
        assert vs["n"] == 6 and vs["accuracy_a"] == rows["base"]["accuracy"]
        assert vs["accuracy_b"] == rows[model]["accuracy"]
        assert vs["difference"] == round((vs["b_only"] - vs["a_only"]) / 6, 4)
        assert vs["ci95"][0] <= vs["difference"] <= vs["ci95"][1] and 0 < vs["mcnemar_p"] <= 1
        assert f"| {vs['difference']:+.3f} [" in text
    assert "vs base: difference [paired 95% CI], McNemar p" in text
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (out / "eval" / "l1.json").stat().st_mtime_ns
    timed = ["train-l0", "train-l1", "eval-base", "eval-l0", "eval-l1"]  # not the handed-in
    assert list(json.loads((out / "timings.json").read_text())) == timed
    stages.clear()
    run_pipeline(out, config, stage=lambda name, total: stages.append(name) or (lambda n: None),
                 log=lambda line: None)  # fmt: skip
    assert stages == [] and (out / "eval" / "l1.json").stat().st_mtime_ns == stamp
    assert list(json.loads((out / "timings.json").read_text())) == timed  # times kept


def test_bad_pipeline_settings_fail_before_any_work(tmp_path):
    for kw, message in [
        ({"lambdas": ()}, "at least one"),
        ({"lambdas": (0.1, -1.0)}, ">= 0"),
        ({"lambdas": (0.1, 0.1)}, "repeated"),
        ({"reference": "disk"}, "reference"),
        ({"mcq": str(tmp_path / "none.jsonl")}, "does not exist"),
        ({"scoring": "vibes"}, "scoring"),
        ({"drift_tokens": 1}, "drift tokens 1"),
    ]:
        with pytest.raises(CircuitlabError, match=message):
            PipelineConfig(**kw)
