"""Reference circuits (every malformed file a one-line error, fuzzed) and the metrics
against them (sklearn and hand-computed values)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_files import documents
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from circuitlab.circuits.references import (
    average_precision_rows,
    bootstrap_intervals,
    bootstrap_values,
    circuit_metrics,
    load_reference,
    roc_auc_rows,
)
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


def test_vectorised_auc_and_ap_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(3, 40))
        # integer scores on odd trials: many ties, which sklearn treats as one threshold
        scores = rng.integers(0, 4, (3, n)).astype(float) if trial % 2 else rng.normal(size=(3, n))
        truth = rng.random(n) < 0.3
        truth[0], truth[1] = True, False
        auc, ap = roc_auc_rows(scores, truth), average_precision_rows(scores, truth)
        for row in range(3):
            assert auc[row] == pytest.approx(roc_auc_score(truth, scores[row]))
            assert ap[row] == pytest.approx(average_precision_score(truth, scores[row]))


def test_bootstrap_over_heads_on_a_hand_computable_case() -> None:
    # 2 reference heads (0.9, 0.3) and 2 others (0.8, 0.1): AUC 0.75. Each resampled
    # (reference, other) pair is an independent uniform draw of one of each, so the mean
    # bootstrap AUC is the sample's 0.75; AUC is 0 only when both reference draws are 0.3
    # and both other draws are 0.8: probability 1/4 x 1/4.
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    truth = np.array([True, False, True, False])
    auc = bootstrap_values(scores, truth, resamples=20000, seed=1)["auc"]
    assert auc.mean() == pytest.approx(0.75, abs=0.01)
    assert (auc == 0).mean() == pytest.approx(1 / 16, abs=0.01)
    assert bootstrap_intervals(scores, truth, seed=1)["auc"] == (0.0, 1.0)
    # perfectly separated scores stay separated in every resample: AUC and AP exactly 1
    separated = bootstrap_intervals(np.array([0.9, 0.1, 0.8, 0.2]), truth)
    assert separated == {"auc": (1.0, 1.0), "ap": (1.0, 1.0)}


def test_bootstrap_is_seeded_and_brackets_the_mean_over_runs() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(120) < 0.1
    truth[0] = True
    scores = rng.normal(size=(4, 120)) + 1.5 * truth  # 4 runs of an informative method
    a = bootstrap_intervals(scores, truth, seed=5)
    assert a == bootstrap_intervals(scores, truth, seed=5)
    assert a != bootstrap_intervals(scores, truth, seed=6)
    mean_auc = np.mean([roc_auc_score(truth, s) for s in scores])
    mean_ap = np.mean([average_precision_score(truth, s) for s in scores])
    assert a["auc"][0] < mean_auc < a["auc"][1] and a["ap"][0] < mean_ap < a["ap"][1]
    with pytest.raises(CircuitlabError, match="resamples"):
        bootstrap_intervals(scores, truth, resamples=0)


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


@pytest.mark.parametrize(
    "data, threshold, message",
    [
        ({"heads": 5}, None, "heads must be a list of layer.head names, got int"),
        ({"heads": [1.2]}, None, "1.2' is not a head"),
        ({"heads": ["0.1"], "settings": []}, None, "settings must be an object"),
        ({"heads": ["0.1"]}, 0.1, "no settings: re-cutting"),
        ({"heads": [], "settings": {"ablation": "mean"}}, 0.1, "no effects:"),
        (
            {"heads": [], "settings": {"ablation": "zero"}, "effects": {"mean": {}}},
            0.1,
            "no effects.zero:",
        ),
        (
            {"heads": [], "settings": {"ablation": "mean"}, "effects": {"mean": {"relative": 3}}},
            0.1,
            "has shape (), the model has 3 layers x 4 heads",
        ),
        (
            {"heads": [], "settings": {"ablation": "mean"},
             "effects": {"mean": {"relative": [["a"]]}}},
            0.1,
            "not a table of numbers",
        ),
    ],
)  # fmt: skip
def test_a_malformed_reference_json_names_the_file_and_the_fault(
    tmp_path: Path, data: Any, threshold: float | None, message: str
) -> None:
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitlabError) as caught:
        load_reference(str(path), 3, 4, threshold=threshold)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_directory_or_undecodable_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(CircuitlabError, match="is a directory, not a file"):
        load_reference(str(tmp_path), 3, 4)
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe[")
    with pytest.raises(CircuitlabError, match=r"bad\.json is not UTF-8 text"):
        load_reference(str(tmp_path / "bad.json"), 3, 4)


def check_reference_bytes(content: bytes, threshold: float | None) -> None:
    """Any file gives a reference inside the model, or a one-line CircuitlabError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference.json"
        path.write_bytes(content)
        try:
            ref = load_reference(str(path), 3, 4, threshold=threshold)
        except CircuitlabError as e:
            assert "\n" not in str(e) and str(e)
            return
    assert 0 < len(ref.heads) < 12 and ref.mask.shape == (3, 4)
    assert all(0 <= layer < 3 and 0 <= head < 4 for layer, head in ref.heads)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from([None, 0.1]))
def test_any_reference_file_gives_a_reference_or_a_one_line_error(
    content: bytes, threshold: float | None
) -> None:
    check_reference_bytes(content, threshold)
