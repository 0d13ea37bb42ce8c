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
    with pytest.raises(CircuitlabError, match="questions_per_node"):
        DistillConfig(questions_per_node=0)


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


def test_latex_heavy_replies_are_kept_byte_for_byte(server, fake_replies, shipped_nodes, tmp_path):
    """Issue 18: \\omega crashed the run (and every resume on the cached reply); \\frac and
    \\beta were silently decoded to a form feed and a backspace."""
    out = tmp_path / "run"
    summary = distill(shipped_nodes, out, http_config(server("latex"), max_nodes=4))
    assert summary["complete"] and summary["accepted"] == 4 and summary["failed"] == 0
    for record in lines(out / "qa.jsonl"):
        assert record["reasoning"] == f"Step 1: {fake_replies.LATEX_RAW}"
        assert record["answer"] == fake_replies.LATEX_ANSWER
        assert f"{fake_replies.LATEX_RAW}\n</think>" in record["response"]
        assert f"<answer>\n{fake_replies.LATEX_ANSWER}\n</answer>" in record["response"]
    again = distill(shipped_nodes, tmp_path / "again", http_config(server("latex"), max_nodes=4),
                    cache_dir=out / "llm-cache")  # fmt: skip
    assert again["session"]["cache_misses"] == 0 and again["accepted"] == 4


@pytest.mark.parametrize("mode", ["reasoning_content", "reasoning_field", "think"])
def test_a_reasoning_teachers_thinking_is_the_reasoning_kept(
    server, fake_replies, shipped_nodes, tmp_path, mode
):
    """reasoning_content / reasoning / a leading <think> become the record's reasoning; the
    JSON is read after </think> (the designer's thinking holds a decoy object and cites
    "the passage": neither reaches the record)."""
    out = tmp_path / "run"
    summary = distill(shipped_nodes, out, http_config(server(mode), max_nodes=3))
    assert summary["complete"] and summary["accepted"] == 3
    for record in lines(out / "qa.jsonl"):
        assert record["reasoning"] == fake_replies.THINKING
        assert record["reasoning_source"] == "thinking"
        assert record["reply_reasoning"].startswith("Step 1: recall that")
        assert "Not this one" not in record["question"] and "<think>" not in record["answer"]
        assert record["response"].startswith(f"<think>\n{fake_replies.THINKING}\n</think>")


def test_a_plain_teachers_reasoning_is_its_replys(server, shipped_nodes, tmp_path):
    distill(shipped_nodes, tmp_path / "run", http_config(server("ok"), max_nodes=1))
    (record,) = lines(tmp_path / "run" / "qa.jsonl")
    assert record["reasoning_source"] == "reply" and record["reply_reasoning"] is None


def test_rate_limited_requests_are_retried_and_the_run_finishes(server, shipped_nodes, tmp_path):
    srv = server("rate429")
    summary = distill(shipped_nodes, tmp_path / "run", http_config(srv, max_nodes=3))
    assert summary["complete"] and summary["accepted"] == 3 and summary["failed"] == 0
    assert srv.stats()["requests"] == 2 * 3 * 3  # each of the 9 requests: a 429, then a reply


def distill_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "circuitlab", "analog", "distill", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_extra_body_and_timeout_reach_the_server_and_no_key_is_written(
    server, shipped_nodes, tmp_path
):
    srv = server("ok")
    out = tmp_path / "run"
    key = "sk-extra-body-test-9876"
    extra = '{"chat_template_kwargs": {"enable_thinking": false}, "top_p": 0.9}'
    result = distill_cli(
        "--nodes", str(shipped_nodes), "--out", str(out), "--backend", "openai",
        "--base-url", srv.base_url, "--model", "fake-m", "--max-nodes", "2",
        "--extra-body", extra, "--timeout", "900", env={**os.environ, "OPENAI_API_KEY": key},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sent = srv.stats()["options"]
    assert len(sent) == 6 and all(o["top_p"] == 0.9 for o in sent)
    assert all(o["chat_template_kwargs"] == {"enable_thinking": False} for o in sent)
    config = json.loads((out / "config.json").read_text())
    assert config["extra_body"] == json.loads(extra) and config["timeout_s"] == 900
    for path in out.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), path


@pytest.mark.parametrize(
    "extra, message",
    [
        ('{"top_p": 0.9', "--extra-body: not valid JSON"),
        ("[1, 2]", "--extra-body: must be a JSON object"),
        ('{"api_key": "abc"}', "looks like a credential"),
        ('{"headers": {"Authorization": "Bearer sk-1234567"}}', "looks like a credential"),
        ('{"note": "Bearer sk-12345678"}', "holds a credential"),
        ('{"model": "other"}', "extra_body sets model"),
        ('{"max_tokens": 99}', "use --question-tokens"),
    ],
)
def test_a_bad_extra_body_is_a_one_line_error_before_anything_is_written(
    shipped_nodes, tmp_path, extra, message
):
    out = tmp_path / "run"
    result = distill_cli(
        "--nodes", str(shipped_nodes), "--out", str(out), "--backend", "openai",
        "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--extra-body", extra,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_the_api_key_itself_in_the_extra_body_is_refused(shipped_nodes, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY_IN_BODY", "plain-key-without-prefix")
    config = DistillConfig(
        backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
        api_key_env="TEST_KEY_IN_BODY", extra_body={"user": "plain-key-without-prefix"},
    )  # fmt: skip
    with pytest.raises(CircuitlabError, match="holds a credential"):
        distill(shipped_nodes, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()


def test_a_run_recorded_before_extra_body_existed_still_resumes(server, shipped_nodes, tmp_path):
    srv = server("ok")
    out = tmp_path / "run"
    config = http_config(srv, max_nodes=2)
    distill(shipped_nodes, out, config, stop_after_batches=0)
    stored = json.loads((out / "config.json").read_text())
    del stored["extra_body"]  # as an older circuitlab wrote it
    (out / "config.json").write_text(json.dumps(stored))
    assert distill(shipped_nodes, out, config)["accepted"] == 2
    with pytest.raises(CircuitlabError, match="extra_body"):
        distill(shipped_nodes, out, http_config(srv, max_nodes=2, extra_body={"top_p": 0.5}))


def test_questions_per_node_asks_each_node_every_type_in_rotation(server, shipped_nodes, tmp_path):
    """Issue 18: every node yielded exactly one recall question. With K questions a node,
    node i's question k is of type i + k (conceptual, calculation, design trade-off,
    troubleshooting), and the designer is told which (the fake echoes it)."""
    from circuitlab.analog.agents import QUESTION_TYPES

    types = [name for name, _ in QUESTION_TYPES]
    srv = server("ok")
    out = tmp_path / "run"
    config = http_config(srv, max_nodes=3, questions_per_node=4, batch_size=5)
    distill(shipped_nodes, out, config, stop_after_batches=1)
    assert len(lines(out / "qa.jsonl")) == 5
    summary = distill(shipped_nodes, out, config)  # resumes mid-node
    qa = lines(out / "qa.jsonl")
    assert summary["complete"] and summary["qa_records"] == 12 == summary["accepted"]
    assert len({r["id"] for r in qa}) == 12 and srv.stats()["requests"] == 12 * 3
    by_node: dict = {}
    for r in qa:
        by_node.setdefault(r["node_id"], {})[r["question_index"]] = r["question_type"]
        assert r["question"].lower().startswith(r["question_type"] + ": explain")
    assert len(by_node) == 3 and summary["nodes_processed"] == 3
    firsts = []
    for kinds in by_node.values():
        assert sorted(kinds) == [0, 1, 2, 3] and sorted(kinds.values()) == sorted(types)
        firsts.append(kinds[0])
        start = types.index(kinds[0])
        assert [kinds[k] for k in range(4)] == [types[(start + k) % 4] for k in range(4)]
    assert len(set(firsts)) == 3  # each node starts one type further on
    assert summary["qa_per_node"] == 4.0
    assert summary["accepted_by_question_type"] == {t: 3 for t in sorted(types)}
    assert all(c["qa_per_node"] == 4.0 for c in summary["coverage"].values())


def test_one_question_a_node_is_untyped_with_the_ids_it_always_had(server, shipped_nodes, tmp_path):
    distill(shipped_nodes, tmp_path / "run", http_config(server("ok"), max_nodes=4))
    qa = lines(tmp_path / "run" / "qa.jsonl")
    assert len(qa) == 4 and all(r["question_type"] is None for r in qa)
    assert all(r["question"].startswith("Explain how") for r in qa)  # no type was asked for
    assert all(r["id"] == "qa-" + r["node_id"].removeprefix("n-") for r in qa)


class FieldByField:
    """A backend that continues a prefilled reply, as the embedded model does, with a
    fixed reply per agent and a budget of one character a token: what it writes past the
    budget is cut, with finish_reason "length"."""

    continues_prefill = True
    model = identity = "field-by-field"
    REASONING = "Feedback makes the closed-loop gain 1/beta when the loop gain is large."

    def __init__(self) -> None:
        self.budgets: list[tuple[str, int]] = []

    def generate(self, requests):
        from circuitlab.analog.llm.base import ChatResult

        results = []
        for r in requests:
            system = r.messages[0][1]
            if "question designer" in system:
                role, full = (
                    "designer",
                    {"question": "Why does feedback set the gain of an op-amp?"},
                )
            elif "expert analog" in system:
                role, full = "solver", {"reasoning": self.REASONING, "answer": "It is 1/beta."}
            else:
                role, full = "reviewer", {"verdict": "accept", "feedback": "right"}
            self.budgets.append((role, r.max_tokens))
            text = json.dumps(full)
            assert text.startswith(r.prefill), (text, r.prefill)
            rest = text[len(r.prefill) :]
            cut = len(rest) > r.max_tokens
            results.append(ChatResult(r.prefill + rest[: r.max_tokens], self.model,
                                      finish_reason="length" if cut else "stop"))  # fmt: skip
        return results


def test_field_by_field_a_cut_after_the_asked_field_keeps_it_and_asks_the_next(
    shipped_nodes, tmp_path
):
    """The embedded backend writes on past the field it was asked for; a cut there leaves
    the asked field whole, which is kept (the cut one is asked next), never repaired."""
    from circuitlab.analog.distill import Distiller
    from circuitlab.analog.llm.cache import CachedBackend

    node = lines(shipped_nodes)[0]
    fits = len(FieldByField.REASONING) + 10  # the reasoning and its closing quote, not the answer
    for budget, outcome in ((fits, "accepted"), (fits // 3, "truncated")):
        backend = FieldByField()
        config = DistillConfig(answer_tokens=budget, max_revisions=0)
        cached = CachedBackend(backend, tmp_path / f"cache-{budget}")
        (item,) = Distiller(config, cached).run_batch([(node, 0, "conceptual")])
        solver = [b for role, b in backend.budgets if role == "solver"]
        if outcome == "accepted":
            assert item.failure is None and item.verdict == "accept"
            assert item.reasoning == FieldByField.REASONING and item.answer == "It is 1/beta."
            assert solver == [budget, 48]  # no doubled retry: the reasoning was whole
        else:
            assert item.failure["cause"] == "solver:truncated (finish_reason length)"
            assert solver == [budget, 2 * budget] and not item.reasoning
