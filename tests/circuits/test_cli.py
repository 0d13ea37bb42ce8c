"""`circuitlab circuits ...` through the real entry point, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from reference_files import documents
from typer.testing import CliRunner

from circuitlab.cli import app
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM


def run(*args: str):
    """In-process (the heavy imports are paid once); `main()`'s error path is tested below."""
    return CliRunner().invoke(app, ["circuits", *args])


def test_check_prints_the_ioi_metric_on_the_embedded_model() -> None:
    result = run("check", "--task", "ioi", "--num", "8")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "ioi on SmolLM2-135M-Instruct" in text and "positives" in text and "negatives" in text
    assert "gap" in text


def test_reference_on_a_model_directory(tmp_path: Path, tokenizer) -> None:
    from tiny import tiny_lm

    lm: LoadedLM = tiny_lm("gpt2", tokenizer)
    lm.model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "ref"
    args = [
        "reference",
        "--task",
        "docstring",
        "--model",
        str(tmp_path / "tiny"),
        "--num",
        "4",
        "--compare",
        "zero",
        "--layers",
        "1-2",
        "--out",
        str(out),
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    ref = json.loads((out / "reference.json").read_text())
    assert ref["settings"]["layers"] == [1, 2] and set(ref["effects"]) == {"mean", "zero"}
    assert (out / "heatmap.png").exists() and "sensitivity" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "--task", "sorting"], "unknown task"),
        (["reference", "--ablation", "noise"], "unknown ablation"),
        (["reference", "--layers", "a-b"], "bad --layers"),
        (["reference", "--layers", "5-2"], "5-2 runs backwards"),
        (["reference", "--layers", "0,9-3"], "9-3 runs backwards"),
        (["reference", "--layers", ","], "no layers given"),
        (["discover", "--methods", "sae,acdc"], "unknown method"),
        (["discover", "--num", "3", "--n-train", "10"], "exceeds"),
        (["discover", "--node-score", "zscore"], "node_score must be one of"),
        (["evaluate", "--reference", "ioi=x.json", "--bootstrap", "-1"], "bootstrap"),
        (["evaluate", "--reference", "ioi"], "TASK=FILE"),
        (["sweep", "--reference", "x.json", "--features", "a,b"], "bad list"),
        (["sweep", "--reference", "x.json", "--node-scores", "count,z"], "unknown node score"),
    ],
)
def test_bad_input_is_a_circuitlab_error(args, message) -> None:
    result = run(*args)
    assert isinstance(result.exception, CircuitlabError)
    assert message in str(result.exception)


def test_bad_input_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "circuitlab", "circuits", "reference", "--threshold", "3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "threshold" in result.stderr and "Traceback" not in result.stderr


def test_literature_lists_the_variants() -> None:
    result = run("literature", "--model", "gpt2", "--task", "ioi")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "wang" in text and "sae-paper" in text and "11.3" in text


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    from tiny import tiny_lm

    where = tmp_path_factory.mktemp("model") / "tiny"
    lm: LoadedLM = tiny_lm("gpt2", tokenizer)
    lm.model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    (where.parent / "heads.json").write_text(json.dumps(["0.1", "1.2", "2.0"]))
    return where


def test_discover_writes_scores_timings_and_a_heatmap(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "disc"
    result = run(
        "discover",
        "--task",
        "ioi",
        "--model",
        str(tiny_dir),
        "--reference",
        str(tiny_dir.parent / "heads.json"),
        "--num",
        "8",
        "--epochs",
        "30",
        "--methods",
        "sae,sae-edge,attribution,random",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["methods"]) == {"sae", "sae-edge", "attribution", "random"}
    sae = scores["methods"]["sae"]
    assert {"activations", "sae_training", "scoring"} <= set(sae["seconds"])
    assert 0 <= sae["evaluation"]["auc"] <= 1 and len(sae["ranking"]) == 12
    assert (out / "heatmap.png").exists() and (out / "report.md").exists()


def test_discover_null_z_scores_heads_against_label_shuffles(tmp_path: Path, tiny_dir) -> None:
    out = tmp_path / "null"
    result = run("discover", "--task", "ioi", "--model", str(tiny_dir), "--num", "8",
                 "--epochs", "20", "--methods", "sae", "--node-score", "null-z",
                 "--null-permutations", "30", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    sae = json.loads((out / "scores.json").read_text())["methods"]["sae"]
    assert sae["method"] == "sae-node-null-z" and sae["info"]["null"]["permutations"] == 30
    p = np.array(sae["info"]["null"]["p"])
    assert p.shape == (3, 4) and ((p >= 1 / 31 - 1e-6) & (p <= 1)).all()


def test_a_malformed_reference_json_exits_2_with_one_line(tmp_path: Path, tiny_dir) -> None:
    bad = tmp_path / "reference.json"
    bad.write_text('{"heads": 5}')
    result = subprocess.run(
        [sys.executable, "-m", "circuitlab", "circuits", "discover", "--reference", str(bad),
         "--model", str(tiny_dir), "--methods", "random", "--num", "2", "--n-train", "2",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # above it: the weights' loading bar
    assert last.startswith("error: ") and "heads must be a list" in last


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=documents)
def test_discover_on_any_reference_file_runs_or_fails_in_one_line(tiny_dir: Path, content) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference.json"
        path.write_bytes(content)
        result = run("discover", "--model", str(tiny_dir), "--task", "ioi", "--num", "2",
                     "--n-train", "2", "--methods", "random", "--reference", str(path),
                     "--out", str(Path(folder) / "run"))  # fmt: skip
    if result.exception is not None:
        assert isinstance(result.exception, CircuitlabError), repr(result.exception)
        assert "\n" not in str(result.exception)


def test_evaluate_and_sweep_write_a_table_and_plots(tmp_path: Path, tiny_dir: Path) -> None:
    heads = str(tiny_dir.parent / "heads.json")
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--reference",
        f"ioi={heads}",
        "--reference",
        f"greater-than={heads}",
        "--model",
        str(tiny_dir),
        "--methods",
        "sae,attribution,random",
        "--seeds",
        "2",
        "--num",
        "6",
        "--n-train",
        "4",
        "--epochs",
        "20",
        "--out",
        str(out),
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    runs = {(r["task"], r["method"]): r["runs"] for r in results["table"]}
    assert runs == {
        (t, m): (1 if m == "attribution" else 2)
        for t in ("ioi", "greater-than")
        for m in ("sae", "attribution", "random")
    }
    assert (out / "roc.png").exists() and "ROC AUC" in (out / "report.md").read_text()
    for row in results["table"]:  # a bootstrap interval over heads beside AUC and AP
        for key in ("auc", "ap"):
            low, high = row[f"{key}_ci"]
            assert 0 <= low <= high <= 1
            assert f"{row[key]:.3f}" in (out / "report.md").read_text()
    assert "percentile-bootstrap interval" in (out / "report.md").read_text()
    stamp = (out / "units" / "ioi-sae-s1.json").stat().st_mtime_ns
    assert run(*args).exit_code == 0  # resumes: nothing recomputed
    assert (out / "units" / "ioi-sae-s1.json").stat().st_mtime_ns == stamp

    sweep_out = tmp_path / "sweep"
    result = run(
        "sweep",
        "--reference",
        heads,
        "--model",
        str(tiny_dir),
        "--num",
        "6",
        "--seeds",
        "1",
        "--n-train",
        "2,4",
        "--features",
        "8",
        "--l1",
        "0.02",
        "--epochs",
        "10",
        "--out",
        str(sweep_out),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((sweep_out / "results.json").read_text())["rows"]
    assert [(r["setting"], r["value"]) for r in rows] == [
        ("n_train", 2),
        ("n_train", 4),
        ("n_features", 8),
        ("l1", 0.02),
        ("reduction", "mean"),
        ("reduction", "last"),
        ("node_score", "count"),
        ("node_score", "null-z"),
    ]
    # the node score leaves the SAE, and so the edge score, as it was
    edge = {r["value"]: r["edge"] for r in rows if r["setting"] == "node_score"}
    assert edge["count"] == edge["null-z"]
    assert (sweep_out / "sweep.png").exists()


def test_reference_takes_flag_over_toml_over_default(tmp_path: Path, tiny_dir: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        f"[reference]\ntask = 'docstring'\nmodel = {json.dumps(str(tiny_dir))}\nnum = 6\n"
        "layers = [1, 2]\ncompare = ['zero']\nthreshold = 0.1\n"
    )
    out = tmp_path / "ref"
    result = run("reference", "--config", str(toml), "--num", "4", "--threshold", "0.2",
                 "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "reference.json").read_text())["settings"]
    assert settings["num"] == 4 and settings["threshold"] == 0.2  # flags over TOML
    assert settings["layers"] == [1, 2] and settings["compare"] == ["zero"]  # TOML
    assert settings["task"] == "docstring"
    assert settings["ablation"] == "mean" and settings["batch_size"] == 16  # defaults
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nreference = 3\n")
    result = run("sweep", "--config", str(bad))
    assert isinstance(result.exception, CircuitlabError)
    assert "setting reference: expected str, got 3" in str(result.exception)


def test_discover_help_shows_the_default_methods_from_the_config() -> None:
    from circuitlab.circuits.methods import DEFAULT_METHODS

    result = CliRunner().invoke(app, ["circuits", "discover", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.replace("│", " ").split())  # the text, without the box
    assert f"[default: {','.join(DEFAULT_METHODS)}]" in text and "--config" in text


def test_evaluate_units_give_the_same_table_on_every_executor(tmp_path: Path, tiny_dir) -> None:
    """(task, seed) units in two local worker processes and as Ray tasks on a real local
    cluster (2 CPUs, started and stopped by the command) give the same numbers; the run
    directory's identity does not depend on the executor, so a run resumes on another."""
    heads = str(tiny_dir.parent / "heads.json")
    args = ["evaluate", "--reference", f"ioi={heads}", "--model", str(tiny_dir), "--methods",
            "sae,attribution,random", "--seeds", "2", "--num", "6", "--n-train", "4",
            "--epochs", "20", "--workers", "2"]  # fmt: skip
    local = run(*args, "--out", str(tmp_path / "local"))
    assert local.exit_code == 0, local.output
    ray = run(*args, "--executor", "ray", "--out", str(tmp_path / "ray"))
    assert ray.exit_code == 0, ray.output

    def table(name: str) -> list:
        results = json.loads((tmp_path / name / "results.json").read_text())
        return [(r["task"], r["method"], r["runs"], r["auc"], r["ap"]) for r in results["table"]]

    assert table("ray") == table("local")
    again = run(*args[:-2], "--out", str(tmp_path / "ray"))  # another executor: resumes
    assert again.exit_code == 0, again.output


def test_a_refused_input_writes_no_run_directory(tmp_path: Path, tiny_dir) -> None:
    """Issue 23: a bad reference used to leave config.json behind, so the corrected rerun
    was refused as a different config. Now nothing is written until the inputs are read."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"heads": 5}')
    good = str(tiny_dir.parent / "heads.json")
    out = tmp_path / "disc"
    common = ["--task", "ioi", "--model", str(tiny_dir), "--num", "6", "--methods", "random"]
    refused = run("discover", *common, "--reference", str(bad), "--out", str(out))
    assert refused.exit_code != 0 and not out.exists()
    fixed = run("discover", *common, "--reference", good, "--out", str(out))
    assert fixed.exit_code == 0, fixed.output
    evaluate = tmp_path / "eval"
    refused = run("evaluate", "--reference", f"ioi={bad}", "--model", str(tiny_dir),
                  "--methods", "random", "--num", "4", "--out", str(evaluate))  # fmt: skip
    assert refused.exit_code != 0 and not evaluate.exists()
