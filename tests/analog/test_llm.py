"""LLM backends: the HTTP client against real local servers, and the response cache."""

from __future__ import annotations

import time

import pytest

from circuitlab.analog.llm.base import ChatRequest, ChatResult, messages, split_thinking
from circuitlab.analog.llm.cache import CachedBackend
from circuitlab.analog.llm.openai_http import HTTPConfig, OpenAIBackend
from circuitlab.core.errors import CircuitlabError

DESIGN = messages("You are a question designer.", "Passage:\nOp-amps have high gain.")


def backend(srv, **kw) -> OpenAIBackend:
    options = {"retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 10}
    options.update(kw)
    return OpenAIBackend(HTTPConfig(base_url=srv.base_url, model="fake-m", **options))


def test_ok_server_answers_and_receives_the_key(server, monkeypatch):
    srv = server("ok")
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
    client = backend(srv, api_key_env="TEST_LLM_KEY")
    (result,) = client.generate([ChatRequest(DESIGN, max_tokens=20)])
    assert result.error is None and result.model == "fake-m"
    assert '"question"' in result.text and result.usage["completion_tokens"] == 10
    assert srv.stats()["auth"] == ["Bearer sk-secret-123"]


@pytest.mark.parametrize("mode", ["flaky500", "rate429", "malformed_body"])
def test_transient_failures_are_retried_until_they_succeed(server, mode):
    srv = server(mode)
    client = backend(srv)
    results = client.generate([ChatRequest(DESIGN, seed=i) for i in range(3)])
    assert all(r.error is None and '"question"' in r.text for r in results)
    assert srv.stats()["requests"] == 6  # each request failed once, then succeeded


def test_persistent_errors_become_failed_results_not_exceptions(server):
    srv = server("always500")
    client = backend(srv, retries=2)
    (result,) = client.generate([ChatRequest(DESIGN)])
    assert result.text is None and "HTTP 500" in result.error and "3 attempt" in result.error
    assert srv.stats()["requests"] == 3


def test_client_errors_and_dead_servers_fail_fast_and_cleanly(server):
    srv = server("ok")
    wrong_path = OpenAIBackend(
        HTTPConfig(base_url=f"http://127.0.0.1:{srv.port}/nope", model="m", retries=3)
    )
    (result,) = wrong_path.generate([ChatRequest(DESIGN)])
    assert "HTTP 404" in result.error and "1 attempt" in result.error
    dead = OpenAIBackend(
        HTTPConfig(base_url="http://127.0.0.1:9/v1", model="m", retries=1, backoff_s=0.01)
    )
    (result,) = dead.generate([ChatRequest(DESIGN)])
    assert "cannot reach" in result.error


def test_a_server_that_trickles_bytes_meets_the_whole_request_deadline(server):
    """Issue 23's probe: the timeout was per socket read, so one byte a second kept a request
    open forever. The deadline is for the whole reply (then retried like any timeout)."""
    srv = server("trickle", delay=0.1)
    client = backend(srv, timeout_s=1, retries=1)
    started = time.monotonic()
    (result,) = client.generate([ChatRequest(DESIGN)])
    assert result.text is None and "within 1 s" in result.error and "2 attempt" in result.error
    assert time.monotonic() - started < 10  # two deadlines of 1 s and a backoff, not forever


def test_requests_overlap_up_to_the_concurrency_limit(server):
    srv = server("slow", delay=0.3)
    client = backend(srv, concurrency=4)
    results = client.generate([ChatRequest(DESIGN, seed=i) for i in range(8)])
    assert all(r.error is None for r in results)
    # the server saw 4 requests at once (serial: 1), never more; no wall-clock check, which
    # a loaded CPU would make flaky
    assert srv.stats()["max_in_flight"] == 4


def test_finish_reason_reaches_the_caller_and_survives_the_cache(server, tmp_path):
    """A cut-off reply looks whole once its JSON is repaired: only finish_reason tells."""
    srv = server("truncated")
    solver = messages("You are an expert analog circuit designer.", "Question: why?")
    cached = CachedBackend(backend(srv), tmp_path)
    (cut,) = cached.generate([ChatRequest(solver, max_tokens=50)])
    (whole,) = cached.generate([ChatRequest(DESIGN, max_tokens=50)])
    assert cut.finish_reason == "length" and cut.truncated and cut.text.startswith('{"reason')
    assert whole.finish_reason == "stop" and not whole.truncated
    (again,) = CachedBackend(backend(srv), tmp_path).generate([ChatRequest(solver, max_tokens=50)])
    assert again.cached and again.truncated and again.text == cut.text


def test_embedded_backend_reports_a_reply_that_used_its_whole_budget(tiny_model_dir):
    """The embedded model's finish_reason: "length" when max_new_tokens ran out before an
    end of sequence, "stop" when the model ended its reply."""
    import torch

    from circuitlab.analog.llm.embedded import EmbeddedBackend
    from circuitlab.core.lm import load_lm

    lm = load_lm(str(tiny_model_dir))
    client = EmbeddedBackend(lm=lm, batch_size=2)
    eos = lm.tokenizer.eos_token_id
    never_eos = lm.model.lm_head.register_forward_hook(
        lambda _m, _i, logits: logits.index_fill(-1, torch.tensor([eos]), -1e9)
    )
    requests = [ChatRequest(DESIGN, max_tokens=4), ChatRequest(DESIGN, max_tokens=4, seed=1)]
    assert [r.finish_reason for r in client.generate(requests)] == ["length", "length"]
    never_eos.remove()
    always_eos = lm.model.lm_head.register_forward_hook(
        lambda _m, _i, logits: logits.index_fill(-1, torch.tensor([eos]), 1e9)
    )
    (ended,) = client.generate([ChatRequest(DESIGN, max_tokens=4)])
    always_eos.remove()
    assert ended.finish_reason == "stop" and not ended.truncated


def test_split_thinking_reads_the_reply_after_a_leading_think_block():
    assert split_thinking('<think>\nhmm {"a": 1}\n</think>\n\n{"a": 2}') == (
        'hmm {"a": 1}',
        '{"a": 2}',
    )
    assert split_thinking("  <think>cut off mid-thought") == ("cut off mid-thought", "")
    assert split_thinking('{"a": "<think>x</think>"}') == (None, '{"a": "<think>x</think>"}')


@pytest.mark.parametrize("mode", ["reasoning_content", "reasoning_field", "think"])
def test_a_reasoning_models_thinking_is_kept_apart_from_its_reply(server, fake_replies, mode):
    srv = server(mode)
    solver = messages("You are an expert analog circuit designer.", "Question: why?")
    (result,) = backend(srv).generate([ChatRequest(solver)])
    assert result.reasoning == fake_replies.THINKING
    assert result.text.startswith('{"reasoning"') and "<think>" not in result.text


def test_a_reasoning_model_that_spent_its_budget_thinking_is_a_truncated_reply(server):
    srv = server("think_only")
    (result,) = backend(srv).generate([ChatRequest(DESIGN)])
    assert result.error is None and result.text == "" and result.truncated
    assert result.reasoning and srv.stats()["requests"] == 1  # not retried as malformed


def test_extra_body_reaches_the_server_and_keys_the_cache(server, tmp_path):
    srv = server("ok")
    extra = {"chat_template_kwargs": {"enable_thinking": False}, "top_p": 0.9}
    client = backend(srv, extra_body=extra)
    client.generate([ChatRequest(DESIGN, max_tokens=20)])
    (sent,) = srv.stats()["options"]
    assert sent["chat_template_kwargs"] == {"enable_thinking": False} and sent["top_p"] == 0.9
    assert sent["max_tokens"] == 20 and sent["model"] == "fake-m"
    # other server options give other replies: a cache must not answer one with the other's
    assert client.identity != backend(srv).identity
    assert client.identity == backend(srv, extra_body=dict(extra)).identity


def test_bad_config_is_a_user_error():
    with pytest.raises(CircuitlabError, match="http"):
        HTTPConfig(base_url="localhost:8000", model="m")
    with pytest.raises(CircuitlabError, match="model"):
        HTTPConfig(base_url="http://x", model="")
    with pytest.raises(CircuitlabError, match="JSON object"):
        HTTPConfig(base_url="http://x", model="m", extra_body=[1])  # type: ignore[arg-type]


class Counting:
    model = identity = "counting"

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def generate(self, requests):
        self.calls += len(requests)
        if self.fail:
            return [ChatResult(None, "counting", error="boom") for _ in requests]
        return [ChatResult(f"reply to {r.messages[-1][1]}", "counting") for r in requests]


def test_cache_serves_repeated_requests_and_never_caches_failures(tmp_path):
    inner = Counting()
    cached = CachedBackend(inner, tmp_path)
    first = cached.generate([ChatRequest(messages("s", "a")), ChatRequest(messages("s", "b"))])
    again = CachedBackend(Counting(), tmp_path)  # a new process sees the same files
    second = again.generate([ChatRequest(messages("s", "b")), ChatRequest(messages("s", "c"))])
    assert inner.calls == 2 and again.backend.calls == 1
    assert second[0].cached and second[0].text == first[1].text == "reply to b"
    assert not second[1].cached
    assert ChatRequest(messages("s", "a")).key("x") != ChatRequest(messages("s", "a"), seed=1).key(
        "x"
    )
    failing = CachedBackend(Counting(fail=True), tmp_path / "f")
    failing.generate([ChatRequest(messages("s", "z"))])
    failing.generate([ChatRequest(messages("s", "z"))])
    assert failing.backend.calls == 2
