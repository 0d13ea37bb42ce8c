
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks.arithmetic import TASK, one_step_reductions, solve, verify


def examples(size: int, seed: int, count: int = 200, p: int = 11):
    batch = TASK.generate(np.random.default_rng(seed), size, count, p)
    return batch, TASK.to_examples(batch, size, p)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), p=st.sampled_from([5, 7, 11, 13]))
def test_generated_chains_verify_and_match_the_solver(size, seed, p):
    _, exs = examples(size, seed, 50, p)
    for e in exs:
        assert len(e.chain) == size - 1
        assert e.answer == solve(e.question, p)
        assert verify(e.question, e.chain, e.answer, p).valid
        # operators, numbers and brackets: n operators and n + 1 numbers
        tokens = e.question.split()
        assert sum(t in "+-*/" for t in tokens) == size
        assert sum(t.isdigit() for t in tokens) == size + 1


@settings(max_examples=20, deadline=None)
@given(size=st.integers(2, 7), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_a_corrupted_step_is_caught_where_it_is(size, seed, data):
    _, exs = examples(size, seed, 20)
    e = data.draw(st.sampled_from(exs))
    steps = [*e.chain, e.answer]
    k = data.draw(st.integers(0, len(steps) - 1))
    tokens = steps[k].split()
    # one more operation than the previous state leaves room for is never one step away
    tokens = [*tokens, "+", "0"]
    steps[k] = " ".join(tokens)
    verdict = verify(e.question, steps[:-1], steps[-1], 11)
    assert not verdict.valid
    assert verdict.first_error == k


def test_a_changed_number_is_caught():
    question = "5 / ( ( 2 + 5 ) / 10 )"
    assert verify(question, ["5 / ( 7 / 10 )", "5 / 4"], "4", 11).valid
    verdict = verify(question, ["5 / ( 8 / 10 )", "5 / 4"], "4", 11)
    assert (verdict.valid, verdict.first_error, verdict.answer_correct) == (False, 0, True)
    verdict = verify(question, ["5 / ( 7 / 10 )", "5 / 4"], "3", 11)
    assert (verdict.first_error, verdict.answer_correct) == (2, False)


def test_reference_chains_are_valid():
    assert solve("5 / ( ( 2 + 5 ) / 10 )", 11) == "4"
    assert verify(
        "6 / ( 10 * 3 / 5 + 3 )", ["6 / ( 10 * 5 + 3 )", "6 / ( 6 + 3 )", "6 / 9"], "8", 11
    ).valid


def test_evaluation_order_respects_precedence_and_associativity():
    steps = one_step_reductions(tuple(["1", "-", "2", "+", "3", "*", "4"]), 11)
    assert tuple(["10", "+", "3", "*", "4"]) in steps  # left to right
    assert tuple(["1", "-", "2", "+", "1"]) in steps  # multiplication first
    assert tuple(["1", "-", "5", "*", "4"]) not in steps  # 1 - (2 + 3) changes the value
    assert one_step_reductions(tuple(["8", "/", "2", "*", "3"]), 11) == {("4", "*", "3")}
    assert tuple(["8", "+", "6"]) in one_step_reductions(tuple(["8", "+", "2", "*", "3"]), 11)
    assert one_step_reductions(tuple(["(", "2", "+", "5", ")"]), 11) == {("7",)}


def test_solver_rejects_bad_expressions():
    for bad in ["1 +", "( 1 + 2", "1 / 0", "1 + x", "12 + 1"]:
        with pytest.raises(CircuitlabError):
            solve(bad, 11)


def test_vocab_round_trips_and_is_small():
    _, exs = examples(6, 1)
    vocab = TASK.vocab(6, 11)
    assert len(vocab) == 20  # 11 numbers, + - * / ( ) =, <pad>, <eos>
    for e in exs:
        for fmt in ("direct", "cot"):
            text = TASK.text(e, fmt)
            assert vocab.decode(vocab.encode(text)) == text
