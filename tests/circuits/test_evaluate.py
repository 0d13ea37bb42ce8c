"""Evaluation metrics against sklearn and hand-computed values; reference circuits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from circuitlab.circuits.evaluate import circuit_metrics, load_reference
from circuitlab.core.errors import CircuitlabError


def test_metrics_on_known_inputs() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    truth = np.array([True, False, True, False])
    m = circuit_metrics(scores, truth, threshold=0.5)  # predicted: the top two heads
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered right
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5) and m["f1_at_k"] == pytest.approx(0.5)
    # TPR 0.5, TNR 0.5 -> harmonic mean 0.5; circuit of 2 heads
    assert m["tpr_tnr_hmean"] == pytest.approx(0.5) and m["circuit_size"] == 2


def test_metrics_match_sklearn_on_random_inputs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.normal(size=60)
        truth = rng.random(60) < 0.2
        truth[0], truth[1] = True, False
        m = circuit_metrics(scores, truth, threshold=0.3)
        predicted = scores >= 0.3 * scores.max()
        assert m["auc"] == pytest.approx(roc_auc_score(truth, scores))
        assert m["ap"] == pytest.approx(average_precision_score(truth, scores))
        assert m["f1"] == pytest.approx(f1_score(truth, predicted))
        tpr = (predicted & truth).sum() / truth.sum()
        tnr = (~predicted & ~truth).sum() / (~truth).sum()
        assert m["tpr_tnr_hmean"] == pytest.approx(2 * tpr * tnr / (tpr + tnr))


def test_metrics_refuse_a_reference_with_one_class() -> None:
    with pytest.raises(CircuitlabError, match="some heads but not all"):
        circuit_metrics(np.arange(4.0), np.zeros(4, dtype=bool), 0.5)


def test_references_from_files_and_literature(tmp_path: Path) -> None:
    listed = tmp_path / "heads.json"
    listed.write_text(json.dumps(["0.1", "2.3"]))
    ref = load_reference(str(listed), 3, 4)
    assert ref.heads == ((0, 1), (2, 3)) and ref.mask.sum() == 2

    patching = tmp_path / "reference.json"
    relative = [[0.5, 0.0, -0.2, 0.01], [0.0, 0.07, 0.0, 0.0], [0.0, 0.0, 0.0, None]]
    patching.write_text(
        json.dumps(
            {
                "heads": ["0.0", "0.2", "1.1"],
                "settings": {"ablation": "mean", "num": 8, "threshold": 0.05},
                "effects": {"mean": {"relative": relative}},
            }
        )
    )
    assert load_reference(str(patching), 3, 4).heads == ((0, 0), (0, 2), (1, 1))
    assert load_reference(str(patching), 3, 4, threshold=0.1).heads == ((0, 0), (0, 2))

    ioi = load_reference("literature:gpt2:ioi", 12, 12)
    assert len(ioi.heads) == 26 and (9, 0) in ioi.heads
    assert (11, 3) in load_reference("literature:gpt2:ioi:sae-paper", 12, 12).heads


def test_bad_references_are_user_errors(tmp_path: Path) -> None:
    listed = tmp_path / "heads.json"
    listed.write_text(json.dumps(["0.1", "9.3"]))
    with pytest.raises(CircuitlabError, match="another model"):
        load_reference(str(listed), 3, 4)
    with pytest.raises(CircuitlabError, match="does not exist"):
        load_reference(str(tmp_path / "missing.json"), 3, 4)
    listed.write_text(json.dumps(["zero.one"]))
    with pytest.raises(CircuitlabError, match="not a head"):
        load_reference(str(listed), 3, 4)
    with pytest.raises(CircuitlabError, match="literature:MODEL:TASK"):
        load_reference("literature:gpt2", 12, 12)
