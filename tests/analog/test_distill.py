"""Distillation over a real local HTTP server: records, failures, dedup, resume, kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from circuitlab.analog.distill import DistillConfig, distill, select_nodes
from circuitlab.core.errors import CircuitlabError


def http_config(srv, **kw) -> DistillConfig:
    options = {"max_nodes": 12, "batch_size": 4, "retries": 2, "concurrency": 4}
    options.update(kw)
    return DistillConfig(backend="openai", base_url=srv.base_url, model="fake-m", **options)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_records_carry_everything_and_the_key_is_never_written(
    server, shipped_nodes, tmp_path, monkeypatch
):
    srv = server("flaky500")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-store-42")
    summary = distill(shipped_nodes, tmp_path / "run", http_config(srv))
    qa = lines(tmp_path / "run" / "qa.jsonl")
    assert len(qa) == 12 == summary["accepted"] and summary["acceptance_rate"] == 1.0
    record = qa[0]
    for key in ("question", "reasoning", "answer", "node_id", "provenance", "tags", "verdict"):
        assert record[key]
    assert record["models"] == {k: "fake-m" for k in ("question", "reasoning", "answer", "review")}
    assert record["response"].startswith("<think>") and "<answer>" in record["response"]
    assert record["provenance"]["file"].endswith(".sml")
    assert len(summary["coverage"]) >= 8  # round-robin selection spans the taxonomy
    assert all(a == "Bearer sk-do-not-store-42" for a in srv.stats()["auth"])
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert b"sk-do-not-store-42" not in path.read_bytes(), path


def test_malformed_agent_output_is_recorded_per_cause_never_a_crash(
    server, shipped_nodes, tmp_path
):
    summary = distill(shipped_nodes, tmp_path / "bad", http_config(server("bad_content")))
    assert summary["failed"] == 12 and summary["qa_records"] == 0
    assert summary["failures_by_cause"] == {"designer:no_json": 12}
    failure = lines(tmp_path / "bad" / "failures.jsonl")[0]
    assert failure["raw"].startswith("Sure!") and failure["stage"] == "designer"
    down = distill(shipped_nodes, tmp_path / "down", http_config(server("always500"), max_nodes=2))
    assert down["failures_by_cause"] == {"designer:backend_error": 2}


def test_backend_failures_are_not_done_and_a_rerun_retries_them(server, shipped_nodes, tmp_path):
    """Issue 23's probe: an outage failed every node as backend_error, the run said complete
    and a resume never asked again. Now those nodes stay pending until they get an answer."""
    srv = server("always500")
    config = http_config(srv, max_nodes=3, retries=0)
    out = tmp_path / "run"
    down = distill(shipped_nodes, out, config)
    assert down["retryable"] == 3 and down["complete"] is False
    assert json.loads((out / "results.json").read_text())["complete"] is False
    urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/mode/ok", timeout=5).read()
    up = distill(shipped_nodes, out, config)
    assert up["complete"] is True and up["accepted"] == 3 and up["failed"] == up["retryable"] == 0
    assert lines(out / "failures.jsonl") == []
    assert len({r["node_id"] for r in lines(out / "qa.jsonl")}) == len(lines(out / "qa.jsonl"))
    again = distill(shipped_nodes, out, config)  # nothing left to do
    assert again["session"]["nodes"] == 0 and again["complete"] is True


def test_truncated_replies_are_failures_with_their_cause_never_training_data(
    server, shipped_nodes, tmp_path
):
    """Issue 18: a reply cut off by the token limit (finish_reason "length") was repaired
    into a complete-looking object and accepted. Now it is asked again with twice the
    budget, and a second cut is the node's recorded failure."""
    srv = server("truncated")
    out = tmp_path / "run"
    summary = distill(shipped_nodes, out, http_config(srv, max_nodes=3, answer_tokens=100))
    assert summary["complete"] and summary["qa_records"] == 0 and not (out / "qa.jsonl").exists()
    assert summary["failures_by_cause"] == {"solver:truncated (finish_reason length)": 3}
    failure = lines(out / "failures.jsonl")[0]
    assert failure["stage"] == "solver" and failure["retryable"] is False
    assert "100 tokens, then at 200" in failure["detail"] and failure["raw"].startswith("{")
    solver_budgets = sorted(o["max_tokens"] for o in srv.stats()["options"])
    assert solver_budgets.count(100) == 3 and solver_budgets.count(200) == 3


def test_a_reply_cut_at_the_first_budget_is_accepted_from_the_doubled_one(
    server, shipped_nodes, tmp_path
):
    srv = server("truncated_below_300")
    summary = distill(
        shipped_nodes, tmp_path / "run", http_config(srv, max_nodes=3, answer_tokens=160)
    )
    assert summary["accepted"] == 3 and summary["failed"] == 0
    qa = lines(tmp_path / "run" / "qa.jsonl")
    assert all(r["reasoning"].endswith("hence.") for r in qa)  # the whole reply, not half
    assert [o["max_tokens"] for o in srv.stats()["options"]].count(320) == 3


@pytest.mark.parametrize(
    "mode, cause",
    [("cites_passage", "designer:refers_to_passage"),
     ("solver_cites_passage", "solver:refers_to_passage")],
)  # fmt: skip
def test_questions_or_reasoning_citing_the_passage_are_rejected(
    server, shipped_nodes, tmp_path, mode, cause
):
    """Issue 18: the student never sees the passage, so "According to the passage" in a
    question or reasoning is a recorded failure (after the usual sampling retry)."""
    out = tmp_path / "run"
    summary = distill(shipped_nodes, out, http_config(server(mode), max_nodes=3))
    assert summary["complete"] and summary["qa_records"] == 0
    assert summary["failures_by_cause"] == {cause: 3}
    failure = lines(out / "failures.jsonl")[0]
    assert "the student never sees it" in failure["detail"] and failure["retryable"] is False


def test_duplicate_questions_are_dropped(server, shipped_nodes, tmp_path):
    summary = distill(shipped_nodes, tmp_path / "run", http_config(server("same_question")))
    assert summary["qa_records"] == 1
    assert summary["failures_by_cause"] == {"duplicate_question": 11}


def test_resume_continues_without_duplicates_or_losses(server, shipped_nodes, tmp_path):
    srv = server("ok")
    out = tmp_path / "run"
    config = http_config(srv)
    distill(shipped_nodes, out, config, stop_after_batches=1)
    assert len(lines(out / "qa.jsonl")) == 4
    with (out / "qa.jsonl").open("a") as handle:  # a kill in the middle of a write
        handle.write('{"id": "qa-cut", "node_id": "n-cu')
    before = srv.stats()["requests"]
    summary = distill(shipped_nodes, out, config)
    qa = lines(out / "qa.jsonl")
    assert len(qa) == 12 and len({r["node_id"] for r in qa}) == 12
    wanted = {
        n["id"]
        for n in select_nodes(
            [json.loads(x) for x in shipped_nodes.read_text().splitlines()], 12, 0
        )
    }
    assert {r["node_id"] for r in qa} == wanted
    assert srv.stats()["requests"] - before == 8 * 3  # only the 8 new nodes cost requests
    again = distill(shipped_nodes, out, config)
    assert again["session"]["nodes"] == 0 and again["accepted"] == summary["accepted"] == 12
    with pytest.raises(CircuitlabError, match="different config"):
        distill(shipped_nodes, out, http_config(srv, max_revisions=3))


def test_killed_cli_run_resumes_to_exactly_one_record_per_node(server, shipped_nodes, tmp_path):
    srv = server("slow", delay=0.15)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "circuitlab", "analog", "distill", "--nodes", str(shipped_nodes),
        "--out", str(out), "--backend", "openai", "--base-url", srv.base_url,
        "--model", "fake-m", "--max-nodes", "10", "--batch-size", "2", "--concurrency", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    deadline = time.time() + 60
    while len(lines(out / "qa.jsonl")) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(lines(out / "qa.jsonl"))
    assert 3 <= killed_at < 10
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    qa = lines(out / "qa.jsonl")
    assert len(qa) == 10 and len({r["node_id"] for r in qa}) == 10
    assert json.loads((out / "results.json").read_text())["complete"] is True
    assert "10/10 nodes: 10 accepted" in " ".join(result.stderr.split())


def test_bad_distill_settings_are_user_errors():
    with pytest.raises(CircuitlabError, match="base-url"):
        DistillConfig(backend="openai", model="m")
    with pytest.raises(CircuitlabError, match="backend"):
        DistillConfig(backend="gpt")
    with pytest.raises(CircuitlabError, match="max_nodes"):
        DistillConfig(max_nodes=0)


def test_an_api_key_echoed_by_the_server_never_reaches_the_run_directory(
    server, shipped_nodes, tmp_path
):
    """Issue 23's probe: a server that echoes the Authorization header into its error body
    put the key into failures.jsonl. Every message is redacted before it is written."""
    srv = server("echo_headers")
    out = tmp_path / "run"
    key = "sk-live-0123456789abcdef"
    command = [
        sys.executable, "-m", "circuitlab", "analog", "distill", "--nodes", str(shipped_nodes),
        "--out", str(out), "--backend", "openai", "--base-url", srv.base_url,
        "--model", "fake-m", "--max-nodes", "2", "--api-key-env", "TEST_ECHO_KEY",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "TEST_ECHO_KEY": key})  # fmt: skip
    assert f"Bearer {key}" in srv.stats()["auth"]  # the key was sent...
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "failures.jsonl" for p in written)
    assert "HTTP 401" in (out / "failures.jsonl").read_text()
    for path in written:  # ...and is nowhere in what the run wrote, nor in what it printed
        assert key[:12] not in path.read_text(errors="replace"), path
    assert key[:12] not in result.stdout + result.stderr


def test_the_cli_exits_non_zero_while_nodes_wait_for_a_retry(server, shipped_nodes, tmp_path):
    srv = server("always500")
    settings = tmp_path / "distill.toml"
    settings.write_text("retries = 0\n")
    command = [
        sys.executable, "-m", "circuitlab", "analog", "distill", "--nodes", str(shipped_nodes),
        "--out", str(tmp_path / "run"), "--backend", "openai", "--base-url", srv.base_url,
        "--model", "fake-m", "--max-nodes", "2", "--config", str(settings),
    ]  # fmt: skip
    down = subprocess.run(command, capture_output=True, text=True)
    assert down.returncode == 3, down.stderr
    assert "2 node(s) failed on the backend" in " ".join(down.stderr.split())
    urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/mode/ok", timeout=5).read()
    up = subprocess.run(command, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr


def test_a_node_too_large_to_send_is_its_own_failure_not_a_request(server, shipped_nodes, tmp_path):
    """Issue 23: request size is capped; a huge node (a hand-made nodes file) fails alone."""
    from circuitlab.analog.distill import MAX_NODE_CHARS

    nodes = lines(shipped_nodes)[:3]
    nodes[0] = {**nodes[0], "text": "gain " * (MAX_NODE_CHARS // 4)}
    path = tmp_path / "nodes.jsonl"
    path.write_text("".join(json.dumps(n) + "\n" for n in nodes))
    srv = server("ok")
    summary = distill(path, tmp_path / "run", http_config(srv, max_nodes=3))
    assert summary["failures_by_cause"] == {"node_too_large": 1} and summary["accepted"] == 2
    assert summary["complete"] is True and summary["retryable"] == 0
    assert srv.stats()["requests"] == 2 * 3  # the big node cost no request
