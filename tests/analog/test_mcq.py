"""Multiple-choice harness and general-text drift."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitlab.analog.drift import load_probe, measure_drift
from circuitlab.analog.mcq import (
    MCQConfig,
    evaluate_mcq,
    load_mcq,
    option_scores,
    parse_letter,
    parse_row,
    wilson,
)
from circuitlab.analog.sft_data import chat_prompt
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM

EASY = [
    ("What is the capital of France?", ["Paris", "Banana", "Seven", "Blue"], "A"),
    ("How many legs does a dog have?", ["Purple", "Four", "Tuesday", "Cheese"], "B"),
    ("What color is the sky on a clear day?", ["Loud", "Heavy", "Blue", "Square"], "C"),
    ("What do bees make?", ["Bricks", "Steel", "Plastic", "Honey"], "D"),
    ("What is 2 plus 2?", ["4", "elephant", "The moon", "Yellow"], "A"),
    ("Which animal says meow?", ["A table", "A cat", "A cloud", "A river"], "B"),
]


# one torch thread: on a small shared CPU a second thread mostly waits
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> LoadedLM:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return LoadedLM(model, AutoTokenizer.from_pretrained(tiny_model_dir), "tiny", "tiny")


def test_the_embedded_model_scores_a_planted_easy_set_correctly(embedded_lm, tmp_path):
    path = tmp_path / "easy.jsonl"
    rows = [
        {"question": q, "options": o, "answer": a, "subfield": "easy" if i < 3 else "easier"}
        for i, (q, o, a) in enumerate(EASY)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_mcq(embedded_lm, load_mcq(path), MCQConfig(normalize="sum"))
    assert result["accuracy"] == 1.0 and result["correct"] == 6
    assert result["per_subfield"]["easy"]["n"] == 3 and result["mean_margin"] > 0
    assert result["ci95"][0] > 0.5 and result["ci95"][1] == 1.0
    assert [p["choice"] for p in result["predictions"]] == [a for _, _, a in EASY]


def test_shared_prompt_scoring_equals_scoring_each_option_on_its_own(tiny):
    items = load_mcq()[:6]
    fast = option_scores(tiny, items, MCQConfig(batch_size=4, normalize="sum"), None)
    tok = tiny.tokenizer
    for item, scores in zip(items, fast, strict=True):
        head = tok(chat_prompt(tok, item.question), add_special_tokens=False)["input_ids"]
        for option, score in zip(item.options, scores, strict=True):
            tail = tok(option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = tiny.model(torch.tensor([head + tail])).logits
            logp = torch.log_softmax(logits.float(), -1)[0]
            alone = sum(float(logp[len(head) - 1 + k, t]) for k, t in enumerate(tail))
            assert score == pytest.approx(alone, abs=1e-3)


def test_shipped_probe_loads_and_every_mode_runs(tiny):
    items = load_mcq()
    assert len(items) == 60 and {i.subfield for i in items} == {
        "passives", "devices", "amplifiers", "opamps", "feedback", "frequency",
    }  # fmt: skip
    assert [sum(i.answer == k for i in items) for k in range(4)] == [15, 15, 15, 15]
    spread = evaluate_mcq(tiny, items, MCQConfig(limit=12))
    assert spread["n"] == 12 and len(spread["per_subfield"]) == 6  # limit keeps every subfield
    letters = evaluate_mcq(tiny, items[:5], MCQConfig(scoring="letter"))
    assert letters["n"] == 5 and all(len(p["scores"]) == 4 for p in letters["predictions"])
    generated = evaluate_mcq(tiny, items[:3], MCQConfig(mode="generate", max_new_tokens=4))
    assert generated["n"] == 3 and "reply" in generated["predictions"][0]
    assert generated["unparsed"] == sum(p["choice"] is None for p in generated["predictions"])


def test_malformed_rows_are_clear_errors(tmp_path):
    good = {"question": "q?", "options": ["a", "b"], "answer": "B"}
    cases = [
        ({"options": ["a", "b"], "answer": "A"}, "'question' is missing"),
        ({**good, "answer": "E"}, "'answer' must be one letter of A, B"),
        ({**good, "answer": ""}, "'answer' must be one letter"),  # was taken as A
        ({**good, "answer": "BC"}, "'answer' must be one letter"),  # was taken as B
        ({**good, "answer": "AB"}, "'answer' must be one letter"),
        ({**good, "options": ["only one"]}, "needs 2 to 10 options"),
        ({**good, "options": "a or b"}, "'options' must be a list"),
        ({**good, "options": {"B": "x", "A": "y"}}, "option keys must be A, B"),
        ({**good, "options": ["a", ""]}, "every option must be a non-empty string"),
    ]
    for row, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(CircuitlabError, match=f"bad.jsonl:2: {message}"):
            load_mcq(path)
    path.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    with pytest.raises(CircuitlabError, match=r"bad\.jsonl:2 is not valid JSON"):
        load_mcq(path)
    with pytest.raises(CircuitlabError, match="does not exist"):
        load_mcq(tmp_path / "missing.jsonl")


def test_amsbench_shaped_rows_parse():
    row = {"question": "q?", "options": ["A. first", "B. second", "C. third"],
           "groundtruth": "c", "level": "hard"}  # fmt: skip
    item = parse_row(row, "f:1")
    assert item.options == ("first", "second", "third") and item.answer == 2
    assert item.subfield == "hard"
    for spelling in ("b", "(B)", "B.", " B) "):
        assert parse_row({**good_row(), "answer": spelling}, "f:3").answer == 1
    keyed = parse_row({"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"}, "f:2")
    assert keyed.options == ("x", "y") and keyed.answer == 0


def test_letters_are_parsed_from_free_replies_and_intervals_are_wilson():
    assert parse_letter("B", 4) == 1
    assert parse_letter("The answer is (C).", 4) == 2
    assert parse_letter("<think>hmm</think>\n<answer>\nD) because\n</answer>", 4) == 3
    assert parse_letter("A. Paris", 4) == 0
    assert parse_letter("I am not sure", 4) is None
    assert parse_letter("E", 4) is None
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_drift_is_zero_for_the_model_itself_and_grows_when_it_moves(tiny, tiny_model_dir):
    text = load_probe()
    same = measure_drift(tiny.model, tiny.tokenizer, text, window=128, max_tokens=1024)
    assert same["kl"] == 0 and same["perplexity"] == pytest.approx(same["reference_perplexity"])
    assert same["tokens"] > 500
    moved = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    drift = measure_drift(
        moved, tiny.tokenizer, text, reference=tiny.model, window=128, max_tokens=1024
    )
    assert drift["kl"] > 1e-4 and drift["kl_reference_model"] > 1e-4
    assert drift["reference_perplexity"] == pytest.approx(same["perplexity"], rel=1e-4)
    assert drift["perplexity"] != pytest.approx(same["perplexity"], rel=1e-4)


def good_row() -> dict:
    return {"question": "q?", "options": ["a", "b"], "answer": "A"}
