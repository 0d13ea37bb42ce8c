"""LIS: generated chains verify, texts agree, corruption is caught, the distribution holds."""

from __future__ import annotations

from itertools import combinations, pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks import lis
from circuitlab.cot.tasks.common import Example, Verdict

TASK = lis.TASK
SIZES = [3, 4, 7, 50, 100, 124]
COUNT = 40

sizes = st.sampled_from(SIZES)
seeds = st.integers(0, 2**32 - 1)
fast = settings(max_examples=25, deadline=None)


def examples(size: int, seed: int, count: int = COUNT) -> list[Example]:
    batch = TASK.generate(np.random.default_rng(seed), size, count, 0)
    return TASK.to_examples(batch, size, 0)


def brute_force(values: list[int]) -> int:
    """Longest strictly increasing subsequence by trying every subset (tiny inputs only)."""
    for k in range(len(values), 0, -1):
        for picked in combinations(values, k):
            if all(a < b for a, b in pairwise(picked)):
                return k
    return 0


@fast
@given(sizes, seeds)
def test_a_chain_has_one_single_token_step_per_number(size: int, seed: int) -> None:
    # that chains verify and match the solver: test_contract.py, for every task
    for ex in examples(size, seed):
        assert len(ex.chain) == size
        assert all(len(step.split()) == 1 for step in ex.chain)


@fast
@given(sizes, seeds, st.data())
def test_a_corrupted_step_is_caught_where_it_happens(size: int, seed: int, data) -> None:
    ex = examples(size, seed, 1)[0]
    at = data.draw(st.integers(0, size - 1))
    chain = list(ex.chain)
    chain[at] = str(int(chain[at]) + data.draw(st.sampled_from([-1, 1, 7])))
    verdict = TASK.verify(ex.question, chain, ex.answer, 0)
    assert not verdict.valid
    assert verdict.first_error == at
    assert verdict.answer_correct
    assert verdict.reason


def test_wrong_answer_missing_and_extra_steps() -> None:
    ex = examples(50, 3, 1)[0]
    n = len(ex.chain)
    wrong = str(int(ex.answer) + 1)
    verdict = TASK.verify(ex.question, ex.chain, wrong, 0)
    assert (verdict.valid, verdict.first_error, verdict.answer_correct) == (False, n, False)
    verdict = TASK.verify(ex.question, ex.chain[:-1], ex.answer, 0)
    assert (verdict.valid, verdict.first_error, verdict.answer_correct) == (False, n - 1, True)
    verdict = TASK.verify(ex.question, (*ex.chain, "1"), ex.answer, 0)
    assert (verdict.valid, verdict.first_error) == (False, n)
    verdict = TASK.verify(ex.question, (), ex.answer, 0)
    assert (verdict.valid, verdict.first_error, verdict.answer_correct) == (False, 0, True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=9))
def test_solve_matches_brute_force(values: list[int]) -> None:
    assert TASK.solve(" ".join(map(str, values)), 0) == str(brute_force(values))


def test_reference_examples() -> None:
    assert lis.FORMAT.join("121 62 119", ["1", "1", "2"], "2") == "121 62 119 <sep> 1 1 2 <sep> 2"
    assert lis.FORMAT.join("121 62 119", [], "2") == "121 62 119 <sep> 2"
    # The paper's example starts 121 62 119 75 58 with dp 1 1 2 2 1.
    question = "121 62 119 75 58"
    assert TASK.verify(question, ["1", "1", "2", "2", "1"], "2", 0) == Verdict.ok()
    assert TASK.solve("5 1 2 9 3 4 8", 0) == "5"


@pytest.mark.parametrize("size", [3, 50, 124])
def test_values_ranges_and_vocab(size: int) -> None:
    batch = TASK.generate(np.random.default_rng(0), size, 500, 0)
    vocab = TASK.vocab(size, 0)
    assert len(vocab) == 253  # the official LIS vocabulary size
    assert batch.question.shape == (500, size)
    assert batch.steps.shape == (500, size, 1)
    assert batch.answer.shape == (500, 1)
    numbers = np.array([int(vocab.tokens[i]) for i in batch.question.ravel()])
    assert numbers.min() >= size + 1 and numbers.max() <= 249
    assert (batch.step_counts() == size).all()


@pytest.mark.parametrize("size, values", [(8, 50), (12, 25), (124, 256)])
def test_a_smaller_or_larger_number_range(size: int, values: int) -> None:
    """The task argument sets the range: questions stay in size+1..values-1 and still verify."""
    batch = TASK.generate(np.random.default_rng(3), size, 400, values)
    vocab = TASK.vocab(size, values)
    assert len(vocab) == values + 3  # numbers, the separator, <pad> and <eos>
    numbers = np.array([int(vocab.tokens[i]) for i in batch.question.ravel()])
    assert numbers.min() == size + 1 and numbers.max() == values - 1  # both ends are drawn
    for ex in TASK.to_examples(batch, size, values):
        assert TASK.verify(ex.question, ex.chain, ex.answer, values) == Verdict.ok()
        assert ex.answer == TASK.solve(ex.question, values)


def test_a_number_range_too_small_for_the_size_is_refused() -> None:
    from circuitlab.cot.data import DataConfig
    from circuitlab.cot.train import TrainConfig

    with pytest.raises(CircuitlabError, match=r"needs 13\.\.24"):
        TASK.generate(np.random.default_rng(0), 12, 5, 24)
    with pytest.raises(CircuitlabError, match="LIS values 300"):
        DataConfig(task="lis", size=8, values=300)
    with pytest.raises(CircuitlabError, match="LIS values 16"):
        TrainConfig(task="lis", size=8, values=16)
    assert DataConfig(task="arithmetic", size=3, values=5).task_arg == 11  # LIS only
    assert TrainConfig(task="lis", size=8, values=50).data.task_arg == 50


def test_planted_runs_make_long_subsequences() -> None:
    """The official distribution: LIS lengths spread widely, unlike uniform random numbers."""
    answers = np.array([int(ex.answer) for ex in examples(50, 1, 2000)])
    assert answers.min() >= 3 and answers.max() <= 50
    assert 20 < answers.mean() < 26  # 23.0 for the official generator
    assert (answers >= 40).mean() > 0.05


def test_split_runs_and_subsets() -> None:
    rng = np.random.default_rng(0)
    runs = rng.integers(1, 4, 5000)
    total = rng.integers(3, 51, 5000)
    parts = lis.split_runs(rng, runs, total)
    assert (parts.sum(axis=1) == total).all() and (parts >= 0).all()
    assert ((parts > 0).sum(axis=1) <= runs).all() and (parts[:, 0] >= 1).all()
    assert (parts[runs == 1, 1:] == 0).all() and (parts[runs == 2, 2] == 0).all()
    chosen = lis.sorted_samples(rng, parts, 199)
    assert (chosen.sum(axis=2) == parts).all()
    taken = lis.exact_subsets(rng, total, 50)
    assert (taken.sum(axis=1) == total).all()
    # Every position is about equally likely to receive a planted number.
    share = taken.sum(axis=0) / taken.sum()
    assert np.abs(share - 1 / 50).max() < 0.004


def test_bad_sizes_and_questions_raise() -> None:
    rng = np.random.default_rng(0)
    for size in (2, 125):
        with pytest.raises(CircuitlabError, match="out of range"):
            TASK.generate(rng, size, 1, 0)
    with pytest.raises(CircuitlabError):
        TASK.solve("1 2 x", 0)
    with pytest.raises(CircuitlabError):
        TASK.verify("", ["1"], "1", 0)
    assert len(TASK.generate(rng, 10, 0, 0)) == 0
