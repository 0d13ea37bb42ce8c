"""`circuitlab analog` through its real entry point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from cli_imports import imports_torch


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", "analog", *args], capture_output=True, text=True
    )


def test_nodes_command_writes_nodes_and_reports_skipped_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "opamp.md").write_text(
        "# Op-amps\n\n" + "An op-amp with negative feedback keeps its inputs equal. " * 8
    )
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    result = run("nodes", "--corpus", str(corpus), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "skipped broken.pdf" in result.stderr
    summary = json.loads((tmp_path / "run" / "nodes_summary.json").read_text())
    assert summary["nodes"] >= 1 and summary["skipped"][0]["file"] == "broken.pdf"
    coverage = summary["coverage"]
    assert coverage["opamps"]["count"] + coverage["feedback"]["count"] >= 1


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing, out = str(tmp_path / "missing"), str(tmp_path / "d")
    for args, message in [
        (["nodes", "--corpus", missing, "--out", out], "does not exist"),
        (["distill", "--backend", "gpt", "--out", out], "backend"),
        (["distill", "--nodes", missing + ".jsonl", "--out", out], "does not exist"),
    ]:
        result = run(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_train_eval_and_run_report_bad_input_in_one_line(tmp_path):
    bad_mcq = tmp_path / "mcq.jsonl"
    bad_mcq.write_text('{"question": "q?", "options": ["a", "b"], "answer": "Z"}\n')
    bad_array = tmp_path / "mcq.json"
    row = {"question": "q?", "options": "A. a B. b", "groundtruth": "(A)"}
    bad_array.write_text(json.dumps([row, {**row, "options": "a or b"}]))
    out = str(tmp_path / "o")
    for args, message in [
        (["train", "--data", str(tmp_path / "none.jsonl"), "--out", out], "does not exist"),
        (["eval", "--mcq", str(bad_mcq), "--no-drift"], "mcq.jsonl:1: 'answer' must be"),
        (["eval", "--dtype", "fp8", "--no-drift"], "dtype 'fp8': use float32"),
        (["eval", "--mcq", str(bad_array), "--no-drift"], "mcq.json row 2: 'options' is one"),
        (["eval", "--protocol", "amsbench", "--mode", "loglik"], "protocol amsbench generates"),
        (["eval", "--drift-tokens", "-3"], "drift tokens -3: 0 (the whole probe)"),
        (["train", "--data", str(bad_mcq), "--dtype", "fp8", "--out", out], "dtype 'fp8'"),
        (
            ["train", "--data", str(bad_mcq), "--truncation", "keep", "--out", out],
            "truncation 'keep': use cut or drop",
        ),
        (["run", "--lambdas", "0,x", "--out", out], "comma-separated numbers"),
    ]:
        result = run(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_eval_loads_the_model_and_the_drift_original_in_the_asked_dtype(tmp_path):
    probe = tmp_path / "probe.txt"
    probe.write_text(
        "Bread rises because yeast turns sugar into gas, and the gluten in the dough holds "
        "the bubbles. A river carries sand to the sea, where the slow water lets it settle "
        "into a delta. Letters travel in bags from one sorting office to the next.\n"
    )
    out = tmp_path / "eval.json"
    result = run(
        "eval", "--device", "cpu", "--dtype", "bfloat16", "--limit", "6", "--base", "embedded",
        "--probe", str(probe), "--drift-tokens", "16", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["dtype"] == "bfloat16" and data["device"] == "cpu"
    assert data["mcq"]["n"] == 6 and math.isfinite(data["mcq"]["accuracy"])
    assert math.isfinite(data["drift"]["perplexity"])
    assert data["drift"]["tokens"] == 15 and data["drift"]["max_tokens"] == 16  # one window
    # the original is loaded in bfloat16 as well: a float32 one would differ from the model
    assert data["drift"]["kl"] == pytest.approx(0.0, abs=1e-7)


def test_eval_amsbench_protocol_names_itself_and_lists_unparsed_replies(tmp_path):
    questions = tmp_path / "tqa.json"
    questions.write_text(json.dumps([
        {"question": "What do bees make?", "options": "A. Bricks B. Honey C. Steel",
         "groundtruth": "B", "level": "Easy"},
        {"question": "What is 2 plus 2?", "options": "(A) 4 (B) 5 (C) 22", "groundtruth": "A",
         "level": "Hard"},
    ]))  # fmt: skip
    out = tmp_path / "eval.json"
    result = run("eval", "--mcq", str(questions), "--protocol", "amsbench", "--max-new-tokens",
                 "3", "--no-drift", "--threads", "1", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    mcq = json.loads(out.read_text())["mcq"]
    assert mcq["protocol"] == "amsbench" and mcq["parser"] == "strict"
    assert mcq["max_new_tokens"] == 3 and set(mcq["per_subfield"]) == {"Easy", "Hard"}
    printed = " ".join(result.stderr.split())  # the table title may wrap
    assert "generate: amsbench prompt, strict letter parser, temperature 0.1" in printed
    assert f"{mcq['unparsed']} unparsed" in printed
    if mcq["unparsed_ids"]:
        assert f"unparsed replies (counted wrong): {', '.join(mcq['unparsed_ids'])}" in printed


def test_nodes_takes_flag_over_toml_over_default(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "opamp.md").write_text(
        "# Op-amps\n\n" + "An op-amp with negative feedback keeps its inputs equal. " * 8
    )
    toml = tmp_path / "c.toml"
    toml.write_text(
        "[nodes]\nmin_words = 10\nmax_words = 40\n[nodes.corpus]\nnear_duplicate = 0.5\n"
    )
    out = tmp_path / "run"
    result = run("nodes", "--corpus", str(corpus), "--config", str(toml), "--max-words", "60",
                 "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = json.loads((out / "config.json").read_text())
    assert stored["max_words"] == 60  # flag over TOML
    assert stored["min_words"] == 10 and stored["corpus"]["near_duplicate"] == 0.5  # TOML
    assert stored["taxonomy"] is None and stored["corpus"]["min_dedup_words"] > 0  # defaults
    again = run("nodes", "--corpus", str(corpus), "--config", str(toml), "--near-duplicate",
                "0.7", "--out", str(tmp_path / "again"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    stored = json.loads((tmp_path / "again" / "config.json").read_text())
    assert stored["corpus"]["near_duplicate"] == 0.7  # a flag beats a nested TOML table
    bad = tmp_path / "bad.toml"
    bad.write_text("[nodes]\nmin_words = 'ten'\n")
    result = run("nodes", "--config", str(bad), "--out", str(tmp_path / "bad"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "min_words: expected int" in result.stderr


def test_eval_reads_its_settings_and_the_mcq_settings_from_one_toml_table(tmp_path):
    bad_mcq = tmp_path / "mcq.jsonl"
    bad_mcq.write_text('{"question": "q?", "options": ["a", "b"], "answer": "Z"}\n')
    toml = tmp_path / "e.toml"
    toml.write_text(f"[eval]\nmcq = {json.dumps(str(tmp_path / 'none.jsonl'))}\ndrift = false\n"
                    "mode = 'generate'\n")  # fmt: skip
    result = run("eval", "--config", str(toml))
    assert result.returncode == 2 and "none.jsonl" in result.stderr  # the TOML's file
    result = run("eval", "--config", str(toml), "--mcq", str(bad_mcq))
    assert result.returncode == 2 and "'answer' must be" in result.stderr  # the flag's
    toml.write_text("[eval]\nmode = 'guess'\n")  # an MCQConfig setting, checked as such
    result = run("eval", "--config", str(toml))
    assert result.returncode == 2 and "mode 'guess'" in result.stderr


def test_a_light_command_does_not_import_the_configs_of_the_heavy_ones():
    """Commands are built on first use: `analog taxonomy` must not import torch (which
    NSCConfig's module does) just to generate `analog train`'s options."""
    assert not imports_torch("analog", "taxonomy")


def test_nodes_never_read_a_symlink_that_leads_out_of_the_corpus(tmp_path):
    """Issue 23's probe: a corpus symlink to a file outside became nodes (and went to the
    LLM in distill). It is now skipped and reported; a symlink inside the corpus is read."""
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n\n" + "The password of the lab server is swordfish. " * 8)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "more.md").write_text("# More\n\n" + "Private notes about the server. " * 8)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "opamp.md").write_text(
        "# Op-amps\n\n" + "An op-amp with negative feedback keeps its inputs equal. " * 8
    )
    (corpus / "linked.md").symlink_to(secret)
    (corpus / "folder").symlink_to(outside, target_is_directory=True)
    (corpus / "again.md").symlink_to(corpus / "opamp.md")  # inside: read once, as opamp.md
    out = tmp_path / "run"
    result = run("nodes", "--corpus", str(corpus), "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = "".join(p.read_text() for p in out.glob("*.jsonl"))
    assert "swordfish" not in written and "Private notes" not in written
    assert "negative feedback" in written
    summary = json.loads((out / "nodes_summary.json").read_text())
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"linked.md", "folder"}
    assert all("symlink leads out" in r for r in reasons.values())
    assert "skipped linked.md" in result.stderr


def refused(result: subprocess.CompletedProcess[str], message: str, out: Path) -> None:
    """A bad input is refused before the run directory is written (no config.json that
    would refuse the corrected rerun as 'differs in ...')."""
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (out / "config.json").exists()


def test_analog_distill_refused_for_its_model_then_the_corrected_rerun_runs(
    tmp_path, shipped_nodes, server
):
    out = tmp_path / "qa"
    bad = run("distill", "--nodes", str(shipped_nodes), "--model",
              str(tmp_path / "missing.gguf"), "--max-nodes", "1", "--out", str(out))  # fmt: skip
    refused(bad, "missing.gguf does not exist", out)
    fake = server("ok", delay=0.0)
    good = run("distill", "--nodes", str(shipped_nodes), "--backend", "openai",
               "--base-url", fake.base_url, "--model", "fake", "--max-nodes", "1",
               "--out", str(out))  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert (out / "results.json").exists()


def test_analog_train_refused_for_its_data_then_the_corrected_rerun_trains(
    tmp_path, qa_file, tiny_model_dir
):
    data, out = tmp_path / "qa.jsonl", tmp_path / "sft"
    lines = qa_file.read_text().splitlines()
    data.write_text("\n".join([*lines[:3], '{"prompt": "cut sho', *lines[3:]]) + "\n")
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--max-length",
        "96",
        "--threads",
        "1",
    ]
    refused(run(*args), "qa.jsonl:4 is not valid JSON", out)
    data.write_text(qa_file.read_text())  # the user fixes the file: a new data_sha256
    good = run(*args)
    assert good.returncode == 0, good.stderr
    assert (out / "results.json").exists()


def test_analog_train_refused_for_its_model_writes_nothing(tmp_path, qa_file):
    broken, out = tmp_path / "model", tmp_path / "sft"
    broken.mkdir()
    (broken / "config.json").write_text("")
    bad = run("train", "--data", str(qa_file), "--model", str(broken),
              "--out", str(out))  # fmt: skip
    refused(bad, "cannot load model", out)


def test_analog_nodes_refused_for_an_empty_corpus_then_the_corrected_rerun_runs(tmp_path):
    empty, corpus, out = tmp_path / "empty", tmp_path / "corpus", tmp_path / "nodes"
    empty.mkdir()
    corpus.mkdir()
    (corpus / "opamp.md").write_text("# Op-amps\n\n" + "Negative feedback sets the gain. " * 8)
    refused(run("nodes", "--corpus", str(empty), "--out", str(out)), "holds no documents", out)
    good = run("nodes", "--corpus", str(corpus), "--out", str(out))
    assert good.returncode == 0, good.stderr
    assert (out / "nodes.jsonl").exists()


def test_analog_run_refuses_a_bad_mcq_file_before_any_stage(tmp_path):
    mcq, out = tmp_path / "mcq.jsonl", tmp_path / "run"
    mcq.write_text('{"question": "q?", "options": ["a", "b"], "answer": "A"}\n{"question": ')
    refused(run("run", "--mcq", str(mcq), "--out", str(out)), "mcq.jsonl:2 is not valid", out)
    assert not out.exists()  # before: nodes, distillation and training ran first
