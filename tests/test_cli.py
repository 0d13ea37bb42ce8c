"""The CLI through its real entry point (`python -m circuitlab`), as a user runs it."""

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_the_three_systems_and_says_what_is_missing():
    result = run("--help")
    assert result.returncode == 0
    for name in ("cot", "circuits", "analog", "demo"):
        assert name in result.stdout
    for system in ("circuits", "analog"):
        assert "NOT IMPLEMENTED YET" in " ".join(run(system, "--help").stdout.split())


def test_cot_data_writes_files_and_is_deterministic(tmp_path):
    for name in ("a", "b"):
        result = run(
            "cot",
            "data",
            "--task",
            "arithmetic",
            "--size",
            "4",
            "--format",
            "cot",
            "--num",
            "200",
            "--seed",
            "3",
            "--out",
            str(tmp_path / f"{name}.jsonl"),
        )
        assert result.returncode == 0, result.stderr
    first = (tmp_path / "a.jsonl").read_text().splitlines()
    assert first == (tmp_path / "b.jsonl").read_text().splitlines()
    record = json.loads(first[0])
    assert {"task", "size", "question", "chain", "answer", "text"} <= record.keys()
    assert len((tmp_path / "a.test.jsonl").read_text().splitlines()) == 20
    assert json.loads((tmp_path / "a.stats.json").read_text())["num_train"] == 200


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "sorting", "--size", "3"], "unknown task"),
        (["--task", "lis", "--size", "0"], "out of range"),
        (["--task", "equation", "--size", "3", "--p", "9"], "not prime"),
        (["--task", "ed", "--size", "12", "--num", "0"], "at least one"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "d.jsonl"
    result = run("cot", "data", *args, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_exit_2_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(
        "cot",
        "data",
        "--task",
        "lis",
        "--size",
        "10",
        "--num",
        "10",
        "--out",
        str(blocker / "d.jsonl"),
    )
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_demo_writes_a_report_and_resumes(tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"), "--num", "100")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "demo" / "report.md").read_text()
    assert report.count("| cot |") + report.count("| direct |") == 8
    assert (tmp_path / "demo" / "cot-data" / "lis-50.direct.jsonl").exists()
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {r["task"] for r in results["cot_data"]} == {"arithmetic", "equation", "lis", "ed"}
    stamp = (tmp_path / "demo" / "cot-data" / "lis-50.cot.jsonl").stat().st_mtime_ns
    assert run("demo", "--out", str(tmp_path / "demo"), "--num", "100").returncode == 0
    assert (tmp_path / "demo" / "cot-data" / "lis-50.cot.jsonl").stat().st_mtime_ns == stamp
