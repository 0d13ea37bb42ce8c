"""Multiple-choice harness and general-text drift."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitlab.analog.drift import load_probe, measure_drift
from circuitlab.analog.mcq import (
    AMSBENCH_FORMAT,
    MCQConfig,
    amsbench_prompt,
    evaluate_mcq,
    load_mcq,
    option_scores,
    parse_last_word,
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
        ({**good, "options": "a or b"}, "'options' is one string but not lettered"),
        ({**good, "options": "A. only one"}, "'options' is one string but not lettered"),
        ({**good, "options": 7}, "'options' must be a list, an object keyed A, B"),
        ({"question": "q?", "options": ["a", "b"], "groundtruth": "(C)"}, "'groundtruth' must"),
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


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("**C**", "C"),  # the format AMSBench asks for
        ("The correct option is **(B)**.", "B"),
        ("**Answer: D**", "D"),
        ("**C. 20 kΩ**, since the divider halves it", "C"),
        ("(C)", "C"),
        ("Final: B", "B"),
        ("the correct option is D", "D"),
        ("Answer: C", "C"),
        ("To answer this we need the gain of a follower (C)", "C"),  # "To answer" was A
        ("To answer, a capacitor blocks DC: (B)", "B"),
        ("Option A is too small and B too large, so the answer is C", "C"),  # the last one
        ("At first A looks right. Answer: A. On reflection the answer is D.", "D"),
        ("**C**\n\nOption A fails because (A) ignores the load.", "C"),  # asked format wins
        ("\\boxed{B}", "B"),
        ("Therefore, C.", "C"),
        ("D) because the pole moves", "D"),
        ("the answer is a capacitor", None),  # lower case is a word, not a letter
        ("**A capacitor** blocks DC", None),
        ("I think so", None),
        ("", None),
        ("Answer: E", None),  # not one of four options
    ],
)
def test_the_strict_parser_reads_the_last_named_capital_letter(reply, letter):
    want = None if letter is None else "ABCD".index(letter)
    assert parse_letter(reply, 4) == want


def test_the_strict_parser_reads_only_what_follows_the_reasoning():
    think = "<think>Option A? (B) looks plausible, **D** maybe; the answer is A.</think>"
    assert parse_letter(think + "\n\n**C**", 4) == 2
    assert parse_letter(think + "So the answer is B, not A since (A) is wrong... B.", 4) == 1
    assert parse_letter("<think>A</think><think>B</think>\nFinal: D", 4) == 3  # the last one
    assert parse_letter(think + "\nI cannot decide.", 4) is None  # letters only in thought
    assert parse_letter("<think>The answer is **B**, let me check", 4) is None  # never closed


def test_the_last_word_parser_is_amsbench_s_rule():
    assert parse_last_word("The answer is **c**.", 4) == 2  # upper-cased
    assert parse_last_word("**B** because the output swings", 4) is None  # "swings": S
    assert parse_last_word("**B** is the answer, clearly", 4) == 2  # "clearly": C, not B
    assert parse_last_word("", 4) is None and parse_last_word("42", 4) is None


def test_a_json_array_in_amsbench_shape_loads_every_option_shape(tmp_path):
    rows = [
        {"question": "Gain of a follower?", "options": "A. 0.5 B. 1 C. 2 D. 10",
         "groundtruth": "B", "level": "Easy"},
        {"question": "Which R?", "options": "(A) 10 Ω (B) 20 Ω (C) 30 Ω", "groundtruth": "(C)",
         "level": "Hard"},
        {"question": "q3", "options": ["A. first", "B. second"], "groundtruth": "a"},
        {"question": "q4", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "C.",
         "subfield": "opamps", "id": "own-id"},
        {"question": "q5", "options": ["plain", "list"], "answer": "B"},
        {"question": "q6", "options": "A. V B. I C. Vitamin B. or not", "groundtruth": "c"},
    ]  # fmt: skip
    path = tmp_path / "amsbench.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2))
    items = load_mcq(path)
    assert [i.options for i in items] == [
        ("0.5", "1", "2", "10"), ("10 Ω", "20 Ω", "30 Ω"), ("first", "second"), ("x", "y", "z"),
        ("plain", "list"), ("V", "I", "Vitamin B. or not"),
    ]  # fmt: skip
    assert [i.answer for i in items] == [1, 2, 0, 2, 1, 2]
    assert [i.level for i in items] == ["Easy", "Hard", None, None, None, None]
    assert [i.subfield for i in items] == ["Easy", "Hard", "all", "opamps", "all", "all"]
    assert [i.id for i in items] == ["1", "2", "3", "own-id", "5", "6"]
    # the amsbench prompt shows the question and options as the file wrote them
    assert amsbench_prompt(items[0]) == "Gain of a follower?A. 0.5 B. 1 C. 2 D. 10" + (
        AMSBENCH_FORMAT
    )
    assert amsbench_prompt(items[3]) == "q4\nA. x\nB. y\nC. z" + AMSBENCH_FORMAT
    # the same rows as JSON lines read the same
    lines = tmp_path / "amsbench.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_mcq(lines) == items


def test_bad_rows_of_a_json_array_name_the_file_and_row(tmp_path):
    good = {"question": "q?", "options": "A. x B. y", "groundtruth": "A"}
    path = tmp_path / "bad.json"
    for rows, message in [
        ([good, {**good, "groundtruth": "AB"}], "bad.json row 2: 'groundtruth' must be one"),
        ([good, "just text"], "bad.json row 2: a question must be a JSON object"),
        ([good, good, {**good, "options": "x or y"}], "bad.json row 3: 'options' is one string"),
        ([{**good, "question": " "}], "bad.json row 1: 'question' is missing"),
        ([], "bad.json holds no questions"),
    ]:
        path.write_text(json.dumps(rows))
        with pytest.raises(CircuitlabError, match=message):
            load_mcq(path)
    path.write_text(json.dumps([good])[:-1])
    with pytest.raises(CircuitlabError, match=r"bad\.json is not a valid JSON array"):
        load_mcq(path)


def test_protocol_settings_default_per_protocol_and_bad_ones_are_errors():
    ams = MCQConfig(protocol="amsbench")
    assert ams.generates and ams.new_tokens == 2048 and ams.sampling_temperature == 0.1
    plain = MCQConfig(mode="generate")
    assert plain.new_tokens == 24 and plain.sampling_temperature == 0.0
    assert not MCQConfig().generates
    assert MCQConfig(protocol="amsbench", temperature=0, max_new_tokens=8).describe() == (
        "generate: amsbench prompt, strict letter parser, greedy, up to 8 new tokens"
    )
    for bad, message in [
        ({"protocol": "amsbench", "mode": "loglik"}, "protocol amsbench generates"),
        ({"protocol": "mmlu"}, "protocol 'mmlu': use plain or amsbench"),
        ({"parser": "loose"}, "parser 'loose'"),
        ({"temperature": -0.1}, "temperature -0.1"),
        ({"max_new_tokens": 0}, "max_new_tokens 0"),
    ]:
        with pytest.raises(CircuitlabError, match=message):
            MCQConfig(**bad)


def test_the_amsbench_protocol_runs_end_to_end_on_the_embedded_model(embedded_lm, tmp_path):
    path = tmp_path / "tiny.json"
    rows = [{"question": q, "options": " ".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(o)),
             "groundtruth": a, "level": "Easy"} for q, o, a in EASY[:3]]  # fmt: skip
    path.write_text(json.dumps(rows))
    config = MCQConfig(protocol="amsbench", max_new_tokens=6, seed=3)
    result = evaluate_mcq(embedded_lm, load_mcq(path), config)
    assert result["mode"] == "generate" and result["protocol"] == "amsbench"
    assert result["temperature"] == 0.1 and result["max_new_tokens"] == 6
    assert "amsbench prompt, strict letter parser, temperature 0.1, seed 3" in result["method"]
    predictions = result["predictions"]
    assert all(p["level"] == "Easy" and p["reply"] for p in predictions)
    for p in predictions:  # each choice is what the parser reads in its reply
        read = parse_letter(p["reply"], 4)
        assert p["choice"] == (None if read is None else "ABCD"[read])
    assert result["unparsed_ids"] == [p["id"] for p in predictions if p["choice"] is None]
    assert result["unparsed"] == len(result["unparsed_ids"])
    again = evaluate_mcq(embedded_lm, load_mcq(path), config)  # seeded sampling repeats
    assert [p["reply"] for p in again["predictions"]] == [p["reply"] for p in predictions]


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
