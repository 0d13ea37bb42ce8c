"""`analog compare`: the paired statistics against hand computations, pairing, and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_imports import imports_torch

from circuitlab.analog.compare import (
    CompareConfig,
    compare_predictions,
    compare_runs,
    find_result,
    mcnemar_exact,
    paired_bootstrap,
)
from circuitlab.core.errors import CircuitlabError

# A right / B right per question: 7 right only in A, 1 only in B, 3 in both, 1 in neither
A = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0]
B = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]


def predictions(correct, subfields=None, levels=None, ids=None):
    rows = []
    for k, right in enumerate(correct):
        row = {
            "id": ids[k] if ids else f"q{k}",
            "subfield": subfields[k] if subfields else "all",
            "answer": "A",
            "choice": "A" if right else "C",
            "correct": bool(right),
        }
        if levels:
            row["level"] = levels[k]
        rows.append(row)
    return rows


def eval_result(model, rows):
    return {"model": model, "mcq": {"mode": "loglik", "scoring": "option", "predictions": rows}}


def test_mcnemar_exact_matches_the_binomial_tail_by_hand():
    assert mcnemar_exact(7, 1) == 2 * (math.comb(8, 0) + math.comb(8, 1)) / 2**8 == 0.0703125
    assert mcnemar_exact(1, 7) == 0.0703125  # two-sided: symmetric
    assert mcnemar_exact(5, 0) == 2 / 2**5
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(4, 4) == 1.0  # capped at 1
    # exact at counts where 2**n is no float: the normal approximation's neighbourhood
    p = mcnemar_exact(1000, 1100)
    z = (1100 - 1000) / math.sqrt(2100)
    assert 0 < p < 1 and abs(p - math.erfc(z / math.sqrt(2))) < 0.01


def test_paired_bootstrap_holds_the_difference_and_repeats_with_its_seed():
    a, b = [bool(x) for x in A], [bool(x) for x in B]
    low, high = paired_bootstrap(a, b, 10_000, seed=3)
    assert low <= (sum(b) - sum(a)) / len(a) <= high and low < high
    assert paired_bootstrap(a, b, 10_000, seed=3) == (low, high)
    same = paired_bootstrap(a, a, 1000, seed=0)
    assert same == (0.0, 0.0)  # identical runs: no pair ever disagrees


def test_paired_bootstrap_draws_what_resampling_question_indices_draws():
    rng = np.random.default_rng(11)
    a = rng.random(100) < 0.6
    b = a.copy()
    flip = rng.choice(100, 30, replace=False)
    b[flip] = ~b[flip]
    n, resamples = len(a), 20_000
    picks = np.random.default_rng(12).integers(0, n, size=(resamples, n))
    by_index = np.percentile((b.astype(int) - a.astype(int))[picks].mean(axis=1), [2.5, 97.5])
    low, high = paired_bootstrap(list(a), list(b), resamples, seed=0)
    assert abs(low - by_index[0]) <= 0.02 and abs(high - by_index[1]) <= 0.02
    few = [paired_bootstrap(list(a), list(b), 500, seed=s) for s in (0, 1, 0)]
    assert few[0] == few[2] != few[1]  # the seed is what draws them


def test_compare_pairs_by_id_and_breaks_down_by_subfield_and_level():
    subfields = ["amp"] * 6 + ["adc"] * 6
    levels = ["1", "2"] * 6
    a = predictions(A, subfields, levels)
    b = list(reversed(predictions(B, subfields, levels)))  # order must not matter
    result = compare_predictions(a, b, CompareConfig(resamples=2000, seed=1))
    assert (result["a_only"], result["b_only"], result["both_right"], result["both_wrong"]) == (
        7, 1, 3, 1,
    )  # fmt: skip
    assert result["accuracy_a"] == round(10 / 12, 4) and result["accuracy_b"] == round(4 / 12, 4)
    assert result["difference"] == round(-6 / 12, 4)
    assert result["mcnemar_p"] == 0.0703125
    assert result["ci95"][0] <= result["difference"] <= result["ci95"][1]
    amp = result["per_subfield"]["amp"]  # questions 0-5: right only in A, all six
    assert (amp["n"], amp["a_only"], amp["b_only"], amp["mcnemar_p"]) == (6, 6, 0, 2 / 2**6)
    assert set(result["per_level"]) == {"1", "2"} and result["per_level"]["1"]["n"] == 6
    assert compare_predictions(predictions(A), predictions(B))["per_level"] == {}


def test_runs_on_different_questions_are_refused():
    with pytest.raises(CircuitlabError, match="not evaluated on the same questions"):
        compare_predictions(predictions(A), predictions(B[:-1]))
    renamed = predictions(B, ids=[f"x{k}" for k in range(len(B))])
    with pytest.raises(CircuitlabError, match="12 id\\(s\\) only in A"):
        compare_predictions(predictions(A), renamed)
    other_key = predictions(B)
    other_key[3]["answer"] = "B"
    with pytest.raises(CircuitlabError, match="'q3' different correct letters"):
        compare_predictions(predictions(A), other_key)
    twice = predictions(A, ids=["q0"] * len(A))
    with pytest.raises(CircuitlabError, match="id 'q0' twice"):
        compare_predictions(twice, twice)


def test_a_run_folder_names_its_one_eval_result(tmp_path):
    train = tmp_path / "nsc"
    train.mkdir()
    (train / "results.json").write_text(json.dumps({"steps": 3}))  # a train result: not one
    (train / "eval.json").write_text(json.dumps(eval_result("m", predictions(A))))
    assert find_result(train) == (train / "eval.json").resolve()
    pipeline = tmp_path / "run"
    (pipeline / "eval").mkdir(parents=True)
    for name in ("base", "l0"):
        (pipeline / "eval" / f"{name}.json").write_text(json.dumps(eval_result(name, [])))
    with pytest.raises(CircuitlabError, match=r"holds 2 eval results .*eval/base.json.*: name one"):
        find_result(pipeline)
    assert find_result(pipeline / "eval" / "l0.json") == pipeline / "eval" / "l0.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CircuitlabError, match="holds no eval result"):
        find_result(empty)
    with pytest.raises(CircuitlabError, match="does not exist"):
        find_result(tmp_path / "none")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(eval_result("x", predictions(A))))
    (empty / "eval.json").symlink_to(outside)
    with pytest.raises(CircuitlabError, match="symlink leads out"):
        find_result(empty)
    (train / "results.json").write_text(json.dumps({"mcq": {"accuracy": 1}}))
    with pytest.raises(CircuitlabError, match="not an eval result"):
        compare_runs(train / "results.json", train / "eval.json")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", "analog", "compare", *args],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    subfields = ["amp"] * 6 + ["adc"] * 6
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(eval_result("base", predictions(A, subfields))))
    second.write_text(json.dumps(eval_result("tuned", predictions(B, subfields))))
    return first, second


def test_compare_cli_prints_the_table_and_writes_json(two_runs, tmp_path):
    first, second = two_runs
    out = tmp_path / "cmp.json"
    result = run(str(first), str(second), "--out", str(out), "--resamples", "3000")
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert written["mcnemar_p"] == 0.0703125 and written["resamples"] == 3000
    assert (written["a"]["model"], written["b"]["model"]) == ("base", "tuned")
    assert set(written["per_subfield"]) == {"adc", "amp"}
    table = result.stdout  # the table goes to stdout, the "wrote" line to stderr
    assert "subfield" in table and "  amp " in table and "0.0703" in table and "-0.500" in table
    low, high = written["ci95"]
    assert f"{low:+.2f},{high:+.2f}" in table
    again = run(str(first), str(second), "--out", str(out), "--resamples", "3000")
    assert json.loads(out.read_text()) == written and again.stdout == result.stdout


def test_compare_cli_refuses_bad_input_in_one_line_before_writing(two_runs, tmp_path):
    first, second = two_runs
    short = tmp_path / "short.json"
    short.write_text(json.dumps(eval_result("x", predictions(A[:5]))))
    out = tmp_path / "cmp.json"
    for args, message in [
        ([str(first), str(short)], "not evaluated on the same questions"),
        ([str(first), str(tmp_path / "none.json")], "does not exist"),
        ([str(first), str(tmp_path)], "holds 3 eval results"),
        ([str(first), str(second), "--resamples", "0"], "resamples 0: at least 1"),
    ]:
        result = run(*args, "--out", str(out))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_compare_does_not_import_torch(two_runs):
    first, second = two_runs
    assert not imports_torch("analog", "compare", str(first), str(second), "--resamples", "10")
