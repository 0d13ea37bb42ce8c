"""What every cot task promises, checked for each task of the registry (`cot.tasks.TASKS`).

Generated chains verify and agree with the solver; direct and CoT texts carry the same
question and answer and round-trip through the format and the vocabulary; a fixed seed
gives a fixed batch; the JSONL rows match the examples; malformed model output gets a
verdict, never an exception. A new task is covered by adding it to CASES (a test fails until
it is). What only one task does (its corruptions, its solver's edge cases) stays in that
task's own test file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitlab.cot.tasks import TASKS
from circuitlab.cot.tasks.common import Example, Task, Verdict, render_jsonl, token_lengths

# task -> (sizes to try, the task's parameter: the modulus p, or 0 where it has none)
CASES = {
    "arithmetic": ((1, 2, 4, 8), 11),
    "equation": ((1, 2, 3, 5), 11),
    "lis": ((3, 4, 7, 50, 124), 0),
    "ed": ((4, 5, 12, 20), 0),
}
seeds = st.integers(0, 2**32 - 1)
fast = settings(max_examples=15, deadline=None)


def examples(task: Task, size: int, seed: int, param: int, count: int = 20) -> list[Example]:
    batch = task.generate(np.random.default_rng(seed), size, count, param)
    return task.to_examples(batch, size, param)


def drawn(name: str, data) -> tuple[Task, int, int]:
    """The task `name`, one of its sizes drawn by hypothesis, and its parameter."""
    sizes, param = CASES[name]
    return TASKS[name], data.draw(st.sampled_from(sizes)), param


def test_every_registered_task_has_a_case() -> None:
    assert set(CASES) == set(TASKS)


@pytest.mark.parametrize("name", sorted(CASES))
@fast
@given(data=st.data(), seed=seeds)
def test_generated_chains_verify_and_match_the_solver(name: str, data, seed: int) -> None:
    task, size, param = drawn(name, data)
    for ex in examples(task, size, seed, param):
        assert task.verify(ex.question, ex.chain, ex.answer, param) == Verdict.ok()
        assert ex.answer == task.solve(ex.question, param)


@pytest.mark.parametrize("name", sorted(CASES))
@fast
@given(data=st.data(), seed=seeds)
def test_direct_and_cot_texts_agree_and_round_trip(name: str, data, seed: int) -> None:
    task, size, param = drawn(name, data)
    vocab = task.vocab(size, param)
    for ex in examples(task, size, seed, param, 5):
        direct, cot = task.text(ex, "direct"), task.text(ex, "cot")
        assert direct.startswith(ex.question) and direct.endswith(ex.answer)
        prefix = direct[: len(direct) - len(ex.answer)]  # the question and its separator
        assert cot.startswith(prefix)
        assert task.format.split(cot[len(prefix) :]) == (list(ex.chain), ex.answer)
        assert task.format.split(direct[len(prefix) :]) == ([], ex.answer)
        for text in (direct, cot):
            assert vocab.decode(vocab.encode(text)) == text


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.text(max_size=8), max_size=6), answer=st.text(max_size=8))
def test_malformed_output_gets_a_verdict_not_an_exception(
    name: str, steps: list[str], answer: str
) -> None:
    task, (sizes, param) = TASKS[name], CASES[name]
    question = examples(task, sizes[1], 0, param, 1)[0].question
    verdict = task.verify(question, steps, answer, param)
    assert isinstance(verdict, Verdict)
    assert verdict.valid == (verdict.first_error is None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_seed_same_batch(name: str) -> None:
    task, (sizes, param) = TASKS[name], CASES[name]
    size = sizes[-1]
    a, b, c = (task.generate(np.random.default_rng(s), size, 60, param) for s in (7, 7, 8))
    for field in ("question", "steps", "answer"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.question, c.question)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fmt", ["direct", "cot"])
def test_jsonl_rows_match_the_examples(name: str, fmt: str) -> None:
    task, (sizes, param) = TASKS[name], CASES[name]
    size = sizes[1]
    batch = task.generate(np.random.default_rng(2), size, 30, param)
    raw = render_jsonl(task, batch, task.vocab(size, param), size, [fmt], "train")[fmt]
    rows = [json.loads(line) for line in raw.splitlines()]
    exs = task.to_examples(batch, size, param)
    assert len(rows) == len(exs) == 30
    lengths = token_lengths(task, batch, fmt)
    for row, ex, n in zip(rows, exs, lengths, strict=True):
        assert (row["task"], row["size"], row["format"], row["split"]) == (name, size, fmt, "train")
        assert (row["question"], row["answer"]) == (ex.question, ex.answer)
        assert row["chain"] == (list(ex.chain) if fmt == "cot" else [])
        assert row["text"] == task.text(ex, fmt)
        assert len(task.vocab(size, param).encode(row["text"])) == n
