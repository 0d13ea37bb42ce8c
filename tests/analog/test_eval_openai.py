"""`analog eval --backend openai`: a served model scored through the real CLI, against a
real local OpenAI-compatible server (tests/analog/fake_openai_server.py) with canned
replies per question."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from circuitlab.analog.evaluate import EvalConfig, evaluate_remote
from circuitlab.analog.mcq import AMSBENCH_SYSTEM, MCQConfig, amsbench_prompt, lettered, load_mcq

SECRET = "sk-eval-test-secret-0123456789"

# AMSBench-shaped rows in the input shapes load_mcq takes, each with the reply the fake
# model gives and the letter that reply names (None: no answer the parser can read)
QUESTIONS = [
    (
        {"question": "What sets the gain of an inverting amplifier?",
         "options": "A. The load B. The ratio R2/R1 C. The supply D. The bandwidth",
         "groundtruth": "B", "level": "Easy"},
        "<think>Option A is the load, no. (C) the supply? The answer is D? No: it is the "
        "resistor ratio.</think>\n\n**B**",
        "B",
    ),
    (
        {"question": "Which transistor region do linear amplifiers use?",
         "options": ["A. cutoff", "B. saturation", "C. active"], "groundtruth": "(C)",
         "level": "Hard"},
        "<think>Answer: A? **A** would be cutoff.</think>The correct option is **C**",
        "C",
    ),
    (
        {"question": "What does a low-pass RC filter pass?",
         "options": {"A": "low frequencies", "B": "high frequencies"}, "groundtruth": "a",
         "level": "Easy"},
        "**B**",
        "B",
    ),
    (
        {"question": "What is the unit of capacitance?",
         "options": "(A) farad (B) henry (C) ohm", "groundtruth": "A", "level": "Easy"},
        "I cannot tell.",
        None,
    ),
    (
        {"question": "What is a current mirror for?",
         "options": ["copy a current", "amplify a voltage", "store charge"],
         "groundtruth": "A", "level": "Hard"},
        "<think>It might be B, or (C)... still thinking",  # cut off mid-thought
        None,
    ),
]  # fmt: skip


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    mcq = tmp_path / "tqa.json"
    mcq.write_text(json.dumps([row for row, _, _ in QUESTIONS]))
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps({row["question"]: reply for row, reply, _ in QUESTIONS}))
    return mcq, replies


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUITLAB_LLM")}
    env["OPENAI_API_KEY"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", "analog", "eval", *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_amsbench_on_a_server_scores_as_the_canned_letters_imply_and_caches(server, tmp_path):
    mcq, replies = write_inputs(tmp_path)
    srv = server("rate429", replies=replies)  # every request first gets a 429, then its reply
    out = tmp_path / "eval" / "fake.json"
    args = ("--backend", "openai", "--protocol", "amsbench", "--base-url", srv.base_url,
            "--model", "fake", "--mcq", str(mcq), "--max-new-tokens", "512",
            "--concurrency", "3", "--out", str(out))  # fmt: skip
    result = run(*args)
    assert result.returncode == 0, result.stderr

    got = json.loads(out.read_text())
    m = got["mcq"]
    expected = [letter for _, _, letter in QUESTIONS]
    gold = ["B", "C", "A", "A", "A"]
    assert [p["choice"] for p in m["predictions"]] == expected
    assert [p["answer"] for p in m["predictions"]] == gold
    right = sum(e == g for e, g in zip(expected, gold, strict=True))
    assert m["correct"] == right == 2 and m["accuracy"] == round(right / len(gold), 4)
    assert m["unparsed"] == 2 and m["unparsed_ids"] == ["4", "5"]
    assert m["per_subfield"]["Easy"]["correct"] == 1 and m["per_subfield"]["Hard"]["n"] == 2
    assert m["protocol"] == "amsbench" and m["temperature"] == 0.1
    # the thinking is kept apart from the reply the letter was read from
    first = m["predictions"][0]
    assert first["reply"] == "**B**" and "resistor ratio" in first["reasoning"]
    assert got["backend"] == "openai" and "drift" not in got and "skipped" in got["drift_skipped"]
    assert "drift skipped" in result.stderr
    assert f"fake at {srv.base_url}: generate: amsbench prompt" in " ".join(result.stderr.split())

    stats = srv.stats()
    assert stats["requests"] == 2 * len(QUESTIONS)  # each 429 retried once, then answered
    items = load_mcq(mcq)
    sent = {msgs[-1]["content"]: msgs for msgs in stats["messages"]}
    for item in items:  # the hf path's messages: AMSBench's system message and prompt
        messages = sent[amsbench_prompt(item)]
        assert messages[0] == {"role": "system", "content": AMSBENCH_SYSTEM}
        assert len(messages) == 2
    for options in stats["options"]:
        assert options["temperature"] == 0.1 and options["max_tokens"] == 512
        assert options["model"] == "fake" and options["seed"] == 0
    assert stats["auth"] and all(a == f"Bearer {SECRET}" for a in stats["auth"])
    cache = out.parent / "llm-cache"
    assert got["cache"] == {"folder": str(cache), "hits": 0, "misses": len(QUESTIONS)}
    written = [out, *(p for p in cache.rglob("*") if p.is_file())]
    assert all(SECRET not in p.read_text() for p in written)

    again = run(*args)  # served from the cache: the server sees no new request
    assert again.returncode == 0, again.stderr
    assert srv.stats()["requests"] == 2 * len(QUESTIONS)
    second = json.loads(out.read_text())
    assert second["cache"]["hits"] == len(QUESTIONS) and second["cache"]["misses"] == 0
    assert [p["choice"] for p in second["mcq"]["predictions"]] == expected
    assert second["mcq"]["predictions"][0]["reasoning"] == first["reasoning"]


def test_plain_generation_sends_the_lettered_prompt_greedy_with_no_system(server, tmp_path):
    mcq, replies = write_inputs(tmp_path)
    srv = server("slow", delay=0.3, replies=replies)  # replies overlap while they sleep
    config = EvalConfig(
        backend="openai",
        base_url=srv.base_url,
        model="fake",
        mcq=str(mcq),
        concurrency=2,
        questions=MCQConfig(mode="generate", limit=4),
    )
    result = evaluate_remote(config)  # no --out: no cache
    assert "cache" not in result
    picked = load_mcq(mcq)[:4]  # limit 4 of 5 spreads over the file: the first four
    assert [p["id"] for p in result["mcq"]["predictions"]] == [i.id for i in picked]
    stats = srv.stats()
    assert stats["max_in_flight"] == 2  # --concurrency: 2 in flight, never more
    assert sorted(m[-1]["content"] for m in stats["messages"]) == sorted(
        lettered(i) for i in picked
    )
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in stats["messages"])
    assert all(o["temperature"] == 0.0 and o["max_tokens"] == 24 for o in stats["options"])


def test_what_needs_weights_or_a_server_is_a_one_line_error(tmp_path):
    mcq, _ = write_inputs(tmp_path)
    url = ("--base-url", "http://127.0.0.1:9/v1")
    for args, message in [
        (("--model", "m", *url), "loglik scoring needs the model's weights"),
        (("--model", "m", *url, "--mode", "generate", "--probe", str(mcq)), "--probe: drift"),
        (("--model", "m", *url, "--protocol", "amsbench", "--drift-tokens", "9"), "drift needs"),
        (("--model", "m", "--protocol", "amsbench"), "needs --base-url"),
        ((*url, "--protocol", "amsbench"), "needs --model"),
        (("--backend", "vllm"), "backend 'vllm': use hf or openai"),
    ]:
        backend = () if "--backend" in args else ("--backend", "openai")
        result = run(*backend, *args, "--mcq", str(mcq))
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_failed_requests_stop_the_evaluation_and_a_rerun_asks_only_for_them(server, tmp_path):
    from circuitlab.analog.llm.cache import CachedBackend
    from circuitlab.analog.llm.openai_http import HTTPConfig, OpenAIBackend
    from circuitlab.analog.mcq import evaluate_mcq_remote
    from circuitlab.core.errors import CircuitlabError

    mcq, replies = write_inputs(tmp_path)
    srv = server("flaky500", replies=replies)  # each distinct request: a 500 first, then ok
    http = HTTPConfig(base_url=srv.base_url, model="fake", retries=0)
    items = load_mcq(mcq)
    config = MCQConfig(protocol="amsbench")

    def ask(part):
        backend = CachedBackend(OpenAIBackend(http), tmp_path / "cache")
        try:
            return backend, evaluate_mcq_remote(backend, part, config)
        except CircuitlabError as e:  # a failure is no answer: never scored as a wrong one
            return backend, str(e)

    _, error = ask(items[:2])
    assert isinstance(error, str) and error.startswith("2 of 2 requests failed")
    assert "HTTP 500" in error
    assert isinstance(ask(items[:2])[1], dict)  # asked again: answered, and cached
    backend, error = ask(items)
    assert isinstance(error, str) and error.startswith(f"{len(items) - 2} of {len(items)} req")
    assert backend.stats.hits == 2  # the two answered before are not asked again
    backend, result = ask(items)
    assert isinstance(result, dict)
    assert backend.stats.hits == 2 and backend.stats.misses == len(items) - 2
    assert [p["choice"] for p in result["predictions"]] == [e for _, _, e in QUESTIONS]
