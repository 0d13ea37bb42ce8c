"""`circuitlab circuits ...` through the real entry point, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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
