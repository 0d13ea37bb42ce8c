"""Noisy chains: a fraction of the training chains with one wrong step, to measure how
chain-of-thought training degrades when its supervision is wrong.

A corrupted chain has one number token of one step replaced by another number, and is kept
only if the task's own verifier then rejects the chain (a change that happens to leave the
chain valid is drawn again, a few times, then the chain stays as it was). The test split is
never corrupted.
"""

from __future__ import annotations

import numpy as np

from circuitlab.cot.tasks import Task
from circuitlab.cot.tasks.common import TokenBatch

TRIES = 5  # draws per chain before it is left clean


def number_ids(task: Task, size: int, p: int) -> np.ndarray:
    """Ids of the vocabulary's number tokens, the ones a corruption swaps."""
    vocab = task.vocab(size, p)
    return np.array([i for i, t in enumerate(vocab.tokens) if t.isdigit()], dtype=np.int64)


def corrupt_steps(
    task: Task, batch: TokenBatch, size: int, p: int, rate: float, rng: np.random.Generator
) -> tuple[TokenBatch, int]:
    """`batch` with about `rate` of its chains given one wrong step, and how many were."""
    present = batch.step_presence()
    chosen = np.flatnonzero((rng.random(len(batch)) < rate) & present.any(axis=1))
    if not len(chosen):
        return batch, 0
    numbers = number_ids(task, size, p)
    steps = batch.steps.copy()
    corrupted = 0
    for row in chosen:
        for _ in range(TRIES):
            step = rng.choice(np.flatnonzero(present[row]))
            where = np.flatnonzero(np.isin(steps[row, step], numbers))
            if not len(where):
                continue
            at = rng.choice(where)
            old = steps[row, step, at]
            steps[row, step, at] = rng.choice(numbers[numbers != old])
            candidate = TokenBatch(batch.question[row : row + 1], steps[row : row + 1],
                                   batch.answer[row : row + 1])  # fmt: skip
            (example,) = task.to_examples(candidate, size, p)
            if not task.verify(example.question, example.chain, example.answer, p).valid:
                corrupted += 1
                break
            steps[row, step, at] = old  # still a valid chain: draw another change
    return TokenBatch(batch.question, steps, batch.answer), corrupted
