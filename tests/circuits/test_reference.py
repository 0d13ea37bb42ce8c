"""Patching reference runs (tiny Llama for the logic, the embedded SmolLM2 for the real thing)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from circuitlab.circuits.literature import CIRCUITS, literature_circuit
from circuitlab.circuits.metrics import metric_values, score_task, token_sets
from circuitlab.circuits.reference import HeadEffects, ReferenceConfig, run_reference
from circuitlab.circuits.tasks import make_task
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM


def test_reference_run_writes_outputs_and_resumes(tmp_path: Path, tokenizer) -> None:
    from tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer)
    config = ReferenceConfig(
        task="ioi", num=6, batch_size=4, compare=("resample", "zero"), threshold=0.1
    )
    ref = run_reference(config, tmp_path / "run", lm=lm)
    stored = json.loads((tmp_path / "run" / "reference.json").read_text())
    assert stored["heads"] == ref["heads"]
    assert (tmp_path / "run" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    rel = torch.tensor(ref["effects"]["mean"]["relative"])
    assert rel.shape == (3, 6)
    chosen = {tuple(map(int, h.split("."))) for h in ref["heads"]}
    for layer in range(3):
        for head in range(6):
            assert ((layer, head) in chosen) == (abs(float(rel[layer, head])) >= 0.1)
    kinds = {row["ablation"] for row in ref["sensitivity"]}
    assert kinds == {"mean", "resample", "zero"}
    row = next(r for r in ref["sensitivity"] if r["ablation"] == "mean" and r["threshold"] == 0.1)
    assert row["heads"] == len(ref["heads"]) and row["jaccard_vs_default"] == 1.0
    sizes = [r["heads"] for r in ref["sensitivity"] if r["ablation"] == "mean"]
    assert sizes == sorted(sizes, reverse=True)  # higher threshold, fewer heads
    assert "| mean | 0.1 |" in (tmp_path / "run" / "report.md").read_text()
    # a rerun reuses every finished unit
    units = sorted((tmp_path / "run" / "units").iterdir())
    mtimes = [u.stat().st_mtime_ns for u in units]
    again = run_reference(config, tmp_path / "run", lm=lm)
    assert again["effects"] == ref["effects"]
    assert [u.stat().st_mtime_ns for u in units] == mtimes
    # another config in the same directory is refused
    with pytest.raises(CircuitlabError, match="different config"):
        run_reference(ReferenceConfig(task="ioi", num=7), tmp_path / "run", lm=lm)


def test_effects_arithmetic() -> None:
    eff = HeadEffects(
        kind="mean",
        clean=torch.tensor([4.0, 6.0]),
        corrupted=torch.tensor([0.0, 0.0]),
        ablated=torch.tensor([[[5.0, 1.0]], [[5.0, 5.0]]]),  # 1 layer, 2 heads
    )
    assert eff.gap == 5.0
    torch.testing.assert_close(eff.effect, torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(eff.relative, torch.tensor([[0.0, 0.4]]))
    assert eff.circuit(0.3) == [(0, 1)] and eff.circuit(0.5) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num": 0}, "num"),
        ({"ablation": "noise"}, "unknown ablation"),
        ({"threshold": 2.0}, "threshold"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_reference_settings(kwargs, message) -> None:
    with pytest.raises(CircuitlabError, match=message):
        ReferenceConfig(**kwargs)


def test_literature_circuits_and_variants() -> None:
    ioi = literature_circuit("gpt2", "ioi")
    assert len(ioi.heads) == 26 and (9, 0) in ioi.heads and ioi.variant == "wang"
    sae = literature_circuit("openai-community/gpt2", "ioi", "sae-paper")
    assert set(ioi.heads) ^ set(sae.heads) == {(9, 0), (11, 3)}
    assert len(literature_circuit("gpt2", "greater-than").heads) == 9
    hanna = literature_circuit("gpt2", "greater-than", "hanna")
    assert hanna.names == ("5.1", "5.5", "6.9", "7.10", "8.8", "8.11", "9.1")
    doc = literature_circuit("attn-only-4l", "docstring")
    assert doc.names == ("0.5", "1.2", "1.4", "2.0", "3.0", "3.6")
    assert set(literature_circuit("attn-only-4l", "docstring", "sae-paper").heads) ^ set(
        doc.heads
    ) == {(1, 2), (1, 0)}
    assert all(c.citation and len(set(c.heads)) == len(c.heads) for c in CIRCUITS)
    with pytest.raises(CircuitlabError, match="no published circuit"):
        literature_circuit("SmolLM2-135M-Instruct", "ioi")
    with pytest.raises(CircuitlabError, match="no variant"):
        literature_circuit("gpt2", "ioi", "mine")


def test_metrics_on_hand_made_logits() -> None:
    from circuitlab.circuits.tasks.common import CircuitTask

    task = CircuitTask("t", "logit_diff", ("a", "b"), ("c", "d"), ((1,), (2,)), ((2, 3), (0,)))
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0], [2.0, 0.0, 1.0, 0.0]])
    sets = token_sets(task)
    torch.testing.assert_close(metric_values(logits, sets, "logit_diff"), torch.tensor([2.0, -1.0]))
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(
        metric_values(logits, sets, "prob_diff"),
        torch.stack([probs[0, 1] - probs[0, 2] - probs[0, 3], probs[1, 2] - probs[1, 0]]),
    )
    torch.testing.assert_close(
        metric_values(logits, sets, "logprob"), torch.log(torch.stack([probs[0, 1], probs[1, 2]]))
    )


# --- the embedded SmolLM2 ----------------------------------------------------------------


def test_smollm2_does_ioi(embedded_lm: LoadedLM) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = make_task("ioi", embedded_lm.tokenizer, n=24, seed=0)
    score = score_task(embedded_lm, task, batch_size=24)
    assert score.positives.mean() > 3.0  # measured ~5 on 250 prompts
    assert (score.positives > 0).float().mean() > 0.9
    assert abs(float(score.negatives.mean())) < 1.0  # ABC: neither name is in the prompt
    assert score.accuracy > 0.8


def test_smollm2_reference_run(tmp_path: Path, embedded_lm: LoadedLM) -> None:
    # the last two layers only (a full run is minutes, see the README); one thread is much
    # faster than two when other processes share the CPU
    config = ReferenceConfig(task="ioi", num=4, batch_size=4, layers=(28, 29), threads=1)
    ref = run_reference(config, tmp_path / "ref", lm=embedded_lm)
    assert ref["layout"] == {"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "d_model": 576}
    rel = ref["effects"]["mean"]["relative"]
    assert len(rel) == 30 and all(len(row) == 9 for row in rel)
    assert all(v is None for row in rel[:28] for v in row)  # not patched
    late = torch.tensor(rel[28:])
    assert torch.isfinite(late).all() and late.abs().max() > 0.01
    assert ref["metric"]["positives_mean"] > 2.0
    assert all(int(h.split(".")[0]) >= 28 for h in ref["heads"])
    assert (tmp_path / "ref" / "heatmap.png").exists()
