"""Linear equations: generator, solver and verifier checked against each other."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks.common import Example
from circuitlab.cot.tasks.equation import TASK, solve, verify, vocab

P = 11
REF_QUESTION = "7 a + 7 b + 10 c = 3 , 8 a + 10 b + 9 c = 8 , 0 a + 6 b + 0 c = 9"
REF_STEPS = (
    "a + 1 b + 3 c = 2 , 2 b + 7 c = 3 , 6 b + 0 c = 9",
    "a + 5 c = 6 , b + 9 c = 7 , 1 c = 0",
)
REF_ANSWER = "a = 6 , b = 7 , c = 0"

SIZES = st.integers(1, 5)
SEEDS = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=15, deadline=None)


def examples(size: int, seed: int, count: int = 20, p: int = P) -> list[Example]:
    batch = TASK.generate(np.random.default_rng(seed), size, count, p)
    return TASK.to_examples(batch, size, p)


def numbers_in(text: str) -> list[int]:
    """Token positions of the numbers in a state's text."""
    return [i for i, t in enumerate(text.split()) if t.isdigit()]


# ------------------------------------------------------------------------ the reference


def test_reference_example_verifies_and_solves() -> None:
    assert solve(REF_QUESTION, P) == REF_ANSWER
    assert verify(REF_QUESTION, REF_STEPS, REF_ANSWER, P).valid
    text = TASK.format.join(REF_QUESTION, REF_STEPS, REF_ANSWER)
    assert text == (f"{REF_QUESTION} <sep> {REF_STEPS[0]} <sep> {REF_STEPS[1]} <sep> {REF_ANSWER}")
    assert TASK.format.join(REF_QUESTION, (), REF_ANSWER) == f"{REF_QUESTION} <sep> {REF_ANSWER}"


def test_format_split_recovers_the_reference_chain() -> None:
    continuation = " ".join([REF_STEPS[0], "<sep>", REF_STEPS[1], "<sep>", REF_ANSWER])
    assert TASK.format.split(continuation) == (list(REF_STEPS), REF_ANSWER)


def test_vocabulary() -> None:
    v = vocab(3, P)
    assert len(v) == 2 + P + 3 + 4
    for token in ["0", "10", "a", "c", "+", "=", ",", "<sep>"]:
        assert token in v
    assert "d" not in v and "11" not in v
    assert vocab(26, P).id("z") > 0


# ------------------------------------------------------------------------ generated data


@FAST
@given(size=SIZES, seed=SEEDS)
def test_a_chain_eliminates_one_variable_per_step(size: int, seed: int) -> None:
    # that chains verify and match the solver: test_contract.py, for every task
    for ex in examples(size, seed):
        assert len(ex.chain) == size - 1


@pytest.mark.parametrize("p", [2, 3, 13])
def test_other_moduli(p: int) -> None:
    for ex in examples(3, p, count=30, p=p):
        assert verify(ex.question, ex.chain, ex.answer, p).valid
        assert ex.answer == solve(ex.question, p)


@FAST
@given(size=SIZES, seed=SEEDS)
def test_official_text_structure(size: int, seed: int) -> None:
    letters = "abcde"[:size]
    row = " \\+ ".join(rf"\d+ {x}" for x in letters) + r" = \d+"
    question_re = re.compile(" , ".join([row] * size))
    answer_re = re.compile(" , ".join(rf"{x} = \d+" for x in letters))
    for ex in examples(size, seed, count=5):
        assert question_re.fullmatch(ex.question), ex.question
        assert answer_re.fullmatch(ex.answer), ex.answer
        parts = TASK.format.join(ex.question, ex.chain, ex.answer).split(" <sep> ")
        assert parts == [ex.question, *ex.chain, ex.answer]
        # state s writes every column from s on, and only the pivot of eliminated ones
        for s, step in enumerate(ex.chain, start=1):
            for i, equation in enumerate(step.split(" , ")):
                terms = equation.split(" = ")[0].split(" + ")
                expected = ([letters[i]] if i < s else []) + [rf"\d+ {x}" for x in letters[s:]]
                assert len(terms) == len(expected)
                assert all(re.fullmatch(e, t) for e, t in zip(expected, terms, strict=True))


def test_size_one_has_no_steps() -> None:
    batch = TASK.generate(np.random.default_rng(0), 1, 7, P)
    assert batch.steps.shape[:2] == (7, 0)
    for ex in TASK.to_examples(batch, 1, P):
        assert ex.chain == ()
        assert verify(ex.question, (), ex.answer, P).valid


def test_ids_are_in_the_vocabulary_and_count_is_exact() -> None:
    for size in range(1, 6):
        batch = TASK.generate(np.random.default_rng(size), size, 333, P)
        assert len(batch) == 333
        for ids in (batch.question, batch.steps, batch.answer):
            assert np.all((ids >= 0) & (ids < len(vocab(size, P))))
    assert len(TASK.generate(np.random.default_rng(0), 3, 0, P)) == 0


# ------------------------------------------------------------------------ wrong chains


@FAST
@given(size=st.integers(2, 5), seed=SEEDS, data=st.data())
def test_a_changed_coefficient_is_caught_where_it_happens(
    size: int, seed: int, data: st.DataObject
) -> None:
    ex = examples(size, seed, count=1)[0]
    states = [*ex.chain, ex.answer]
    k = data.draw(st.integers(0, len(states) - 1))
    tokens = states[k].split()
    at = data.draw(st.sampled_from(numbers_in(states[k])))
    tokens[at] = str((int(tokens[at]) + data.draw(st.integers(1, P - 1))) % P)
    states[k] = " ".join(tokens)
    verdict = verify(ex.question, states[:-1], states[-1], P)
    assert not verdict.valid and verdict.first_error == k
    assert verdict.answer_correct == (k < len(ex.chain))


def test_too_few_and_too_many_steps() -> None:
    short = verify(REF_QUESTION, REF_STEPS[:1], REF_STEPS[1], P)
    assert short.first_error == 1 and not short.answer_correct
    skipped = verify(REF_QUESTION, REF_STEPS[:1], REF_ANSWER, P)
    assert skipped.first_error == 1 and skipped.answer_correct
    direct = verify(REF_QUESTION, (), REF_ANSWER, P)
    assert direct.first_error == 0 and direct.answer_correct
    extra = verify(REF_QUESTION, [*REF_STEPS, REF_ANSWER], REF_ANSWER, P)
    assert extra.first_error == 2 and extra.answer_correct


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        "a + 1 b + 3 c = 2 , 2 b + 7 c = 3",
        "a + a = 2 , 2 b = 3 , 6 b = 9",
        "a + 1 b + 3 c = 11 , 2 b + 7 c = 3 , 6 b + 0 c = 9",
        "a = = 2 , b = 3 , c = 9",
        "a + 1 b + 3 c = 2 , 2 b + 7 c = 3 , 6 b + 0 c = 9 ,",
        "<sep> <pad> ( 12 z",
    ],
)
def test_malformed_output_gets_a_verdict_not_an_exception(bad: str) -> None:
    as_step = verify(REF_QUESTION, [bad, REF_STEPS[1]], REF_ANSWER, P)
    assert as_step.first_error == 0 and as_step.reason
    as_answer = verify(REF_QUESTION, REF_STEPS, bad, P)
    assert as_answer.first_error == 2 and not as_answer.answer_correct


def test_collapsed_but_equivalent_text_is_not_token_exact() -> None:
    # "1 a" means the same as "a", but the official chain writes the bare variable
    step = "1 " + REF_STEPS[0]
    verdict = verify(REF_QUESTION, [step, REF_STEPS[1]], REF_ANSWER, P)
    assert verdict.first_error == 0 and "not the elimination" in verdict.reason


# ------------------------------------------------------------------------ the solver


def brute_force(rows: list[list[int]], p: int) -> list[tuple[int, ...]]:
    n = len(rows)
    return [
        x
        for x in itertools.product(range(p), repeat=n)
        if all(sum(c * v for c, v in zip(r[:n], x, strict=True)) % p == r[n] for r in rows)
    ]


def question_text(rows: list[list[int]]) -> str:
    n = len(rows)
    return " , ".join(
        " + ".join(f"{c} {'abcd'[j]}" for j, c in enumerate(r[:n])) + f" = {r[n]}" for r in rows
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 3), p=st.sampled_from([2, 3, 5, 7]))
def test_solve_agrees_with_brute_force(data: st.DataObject, n: int, p: int) -> None:
    row = st.lists(st.integers(0, p - 1), min_size=n + 1, max_size=n + 1)
    rows = data.draw(st.lists(row, min_size=n, max_size=n))
    solutions = brute_force(rows, p)
    question = question_text(rows)
    if len(solutions) == 1:
        expected = " , ".join(f"{'abcd'[i]} = {v}" for i, v in enumerate(solutions[0]))
        assert solve(question, p) == expected
    else:
        with pytest.raises(CircuitlabError):
            solve(question, p)


def test_solve_rejects_singular_and_unparsable_questions() -> None:
    singular = "1 a + 2 b = 3 , 2 a + 4 b = 6"
    with pytest.raises(CircuitlabError, match="no unique solution"):
        solve(singular, P)
    for bad in ["", "1 a + 2 q = 3 , 1 a + 1 b = 1", "1 a + 2 b = 3", "1 a = 11"]:
        with pytest.raises(CircuitlabError):
            solve(bad, P)
    with pytest.raises(CircuitlabError):
        solve(REF_QUESTION, 12)
