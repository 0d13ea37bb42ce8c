"""The shipped probes: the 60-question MCQ file gives nothing away by the length or the
position of its options (issue 19: the right option was uniquely the second-longest in 33
of 60), and the general-text drift probe is large, general and read whole."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitlab.analog.drift import load_probe, measure_drift, shipped_probe
from circuitlab.analog.mcq import MCQ, load_mcq

pytestmark = pytest.mark.usefixtures("one_thread")

Size = Callable[[str], int]
CHARACTERS: Size = len
WORDS: Size = lambda text: len(text.split())  # noqa: E731 - closer to what a tokenizer sees
# rank of the option the rule picks, counted from the longest (0) or, negative, the shortest
RULES = {"longest": 0, "second-longest": 1, "second-shortest": -2, "shortest": -1}


def rule_accuracy(items: Sequence[MCQ], rank: int, size: Size = CHARACTERS) -> float:
    """Expected accuracy of always picking the option of length rank `rank`, ties broken
    at random: a question scores 1/e when its right option is one of e options of equal
    length that together span the rank, so the four rules of a 4-option file add up to 1.
    (Counting ties as wrong would score at most this: the bound tested here is stricter.)
    """
    total = 0.0
    for item in items:
        n = len(item.options)
        k = rank % n
        right = size(item.options[item.answer])
        longer = sum(size(o) > right for o in item.options)
        equal = sum(size(o) == right for o in item.options)
        total += 1 / equal if longer <= k < longer + equal else 0.0
    return total / len(items)


def chance(items: Sequence[MCQ]) -> float:
    return sum(1 / len(item.options) for item in items) / len(items)


def planted(options: list[list[str]], answers: list[int]) -> list[MCQ]:
    return [
        MCQ(str(k), "q?", tuple(o), a, "all")
        for k, (o, a) in enumerate(zip(options, answers, strict=True))
    ]


def test_the_rule_check_finds_a_planted_length_artifact_and_splits_ties():
    artifact = planted([["aa", "bbbb", "c", "ddddddd"], ["eeeee", "f", "gggggggg", "hh"]], [1, 0])
    assert rule_accuracy(artifact, RULES["second-longest"]) == 1.0
    assert rule_accuracy(artifact, RULES["longest"]) == 0.0
    equal = planted([["1 V", "2 V", "3 V", "4 V"]], [2])
    assert [rule_accuracy(equal, r) for r in RULES.values()] == [0.25] * 4
    # the right option ties with one other for the two longest: half a point to each rule
    pair = planted([["long one", "long two", "short", "tiny"]], [1])
    assert rule_accuracy(pair, 0) == rule_accuracy(pair, 1) == 0.5
    assert rule_accuracy(pair, -1) == rule_accuracy(pair, -2) == 0.0
    words = planted([["one two three", "a b", "xxxxxxxxxxxxxxxxxxx", "c"]], [0])
    assert rule_accuracy(words, 0, WORDS) == 1.0 and rule_accuracy(words, 1) == 1.0


@pytest.mark.parametrize("size", [CHARACTERS, WORDS], ids=["characters", "words"])
@pytest.mark.parametrize("rule", list(RULES))
def test_no_option_length_rule_beats_chance_by_more_than_5_points(rule, size):
    items = load_mcq()
    assert len(items) == 60
    accuracy = rule_accuracy(items, RULES[rule], size)
    assert accuracy <= chance(items) + 0.05, f"{rule}: {accuracy:.3f}"


def test_answer_letters_are_balanced_overall_and_within_5_points_per_letter():
    items = load_mcq()
    assert {len(item.options) for item in items} == {4}
    shares = [sum(item.answer == k for item in items) / len(items) for k in range(4)]
    assert all(abs(share - 0.25) <= 0.05 for share in shares), shares


def test_the_general_probe_is_large_varied_and_not_about_circuits():
    text = load_probe()
    assert text == shipped_probe().read_text(encoding="utf-8")
    assert 15_000 <= len(text.encode()) <= 20_000
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(paragraphs) >= 30
    assert len(set(paragraphs)) == len(paragraphs)  # no paragraph repeated to pad it out
    domain = re.compile(
        r"\b(circuits?|voltages?|transistors?|diodes?|amplifiers?|capacitors?|resistors?|"
        r"inductors?|op-amps?|electronics?|MOSFETs?)\b",
        re.I,
    )
    assert domain.findall(text) == []
    for topic in ("bread", "Roman", "glacier", "monsoon", "rainbow", "omelette", "chess"):
        assert topic.lower() in text.lower()


def test_drift_reads_the_whole_shipped_probe(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tokenizer(load_probe(), add_special_tokens=False)["input_ids"]
    assert len(ids) > 3_000  # about five times the old probe (docs/analog.md)
    drift = measure_drift(model, tokenizer, load_probe(), window=256)
    windows = -(-len(ids) // 256)
    assert drift["tokens"] == len(ids) - windows  # every token but each window's first
