"""Longest increasing subsequence: a DP task whose chain writes dp[i] for every position.

dp[i] is the length of the longest strictly increasing subsequence that ends at position i;
the answer is max dp. Questions hold n numbers from n+1..249, so a number in the question is
never confused with a dp value (at most n). The task's argument (what arithmetic takes as
its modulus p) is that range: numbers below `values`, 250 officially (0 means 250). A
smaller range suits small sizes: with n=8-12 and 250 values each number is rare in the
data, and a small model's chain errors are comparisons of close, rarely seen values.

The official generator plants one to three sorted runs among random numbers so that long
subsequences are common; we draw the same distribution for a whole batch at once, with a
per-position loop over [batch]-wide numpy operations.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from functools import cache

import numpy as np

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks.common import ChainFormat, Task, TokenBatch, Verdict, Vocab

NUMBER_RANGE = 250  # the official range: tokens "0".."249"; questions use n+1..249
SEP = "<sep>"
FORMAT = ChainFormat(head=SEP, after="", tail=SEP)
PAPER_SIZES = (50, 80, 100)
MIN_SIZE = 3  # the official generator plants at least 3 increasing numbers
MAX_SIZE = (NUMBER_RANGE - 1) // 2  # a planted run of n distinct values must fit in n+1..249
MAX_RANGE = 256  # questions are generated as uint8
CHUNK = 1 << 16  # examples generated at once, to bound the memory of the [batch, 3, span] masks


def number_range(size: int, values: int) -> int:
    """The range questions of this size draw from (0: the official 250), checked."""
    top = values or NUMBER_RANGE
    if not 2 * size + 1 <= top <= MAX_RANGE:
        raise CircuitlabError(
            f"LIS values {top} do not fit size {size}: a planted run of {size} distinct numbers "
            f"needs {size + 1}..{2 * size}, so use {2 * size + 1}..{MAX_RANGE} (officially "
            f"{NUMBER_RANGE})"
        )
    return top


@cache
def vocab(size: int, values: int) -> Vocab:
    """Numbers 0..values-1 and the separator; the same for every size."""
    top = values or NUMBER_RANGE
    return Vocab.of([*(str(v) for v in range(top)), SEP])


# ---------------------------------------------------------------- generation


def generate(rng: np.random.Generator, size: int, count: int, values: int) -> TokenBatch:
    """`count` official-distribution questions with their dp chains and answers, as ids."""
    TASK.check_size(size)
    top = number_range(size, values)
    if count < 0:
        raise CircuitlabError(f"cannot generate {count} examples: the count must be >= 0")
    number_ids = vocab(size, values).ids([str(v) for v in range(top)])
    chunks = [min(CHUNK, count - start) for start in range(0, count, CHUNK)]
    seq = np.concatenate(
        [sequences(rng, size, rows, top) for rows in chunks] or [np.zeros((0, size), np.uint8)]
    )
    dp = ending_lengths(seq)
    return TokenBatch(
        question=number_ids[seq],
        steps=number_ids[dp][:, :, None],
        answer=number_ids[dp.max(axis=1, initial=0)][:, None],
    )


def sequences(rng: np.random.Generator, n: int, count: int, top: int = NUMBER_RANGE) -> np.ndarray:
    """[count, n] uint8 questions drawn like the official generator (with top = 250).

    Each question plants 1-3 sorted runs of distinct values (together `total` numbers, 3..n)
    at `total` random positions, in order; the other positions are uniform in n+1..top-1.
    """
    start = n + 1
    runs = rng.integers(1, 4, count)
    total = rng.integers(3, n + 1, count)
    run_sizes = split_runs(rng, runs, total)
    _, _, values = np.nonzero(sorted_samples(rng, run_sizes, top - start))
    seq = rng.integers(start, top, (count, n), dtype=np.uint8)
    # Both sides list an example's planted numbers in row-major order: positions ascending
    # on the left, runs one after another (each ascending) on the right.
    seq[exact_subsets(rng, total, n)] = values + start
    return seq


def split_runs(rng: np.random.Generator, runs: np.ndarray, total: np.ndarray) -> np.ndarray:
    """[count, 3] sizes of the planted runs, split the official way (unused runs are 0).

    Two runs: the first gets 1..total//2+1. Three runs: the first gets 1..total//3+1, the
    second 1..half of the rest+1, the third what is left, which can be 0 but never negative
    (total >= 3), so no clamping is needed.
    """
    half = rng.integers(0, total // 2 + 1) + 1
    third = rng.integers(0, total // 3 + 1) + 1
    second_of_three = rng.integers(0, (total - third) // 2 + 1) + 1
    sizes = np.zeros((total.size, 3), dtype=np.int64)
    sizes[:, 0] = np.select([runs == 1, runs == 2], [total, half], third)
    sizes[:, 1] = np.select([runs == 1, runs == 2], [0, total - half], second_of_three)
    sizes[:, 2] = np.where(runs == 3, total - third - second_of_three, 0)
    return sizes


def sorted_samples(rng: np.random.Generator, sizes: np.ndarray, span: int) -> np.ndarray:
    """Boolean [*sizes.shape, span]: a uniform set of sizes[...] distinct values out of span.

    Floyd's algorithm needs one random draw per chosen value (not per candidate value), and
    a membership mask gives each set in sorted order for free.
    """
    flat = sizes.ravel()
    chosen = np.zeros(flat.size * span, dtype=bool)
    base = np.arange(flat.size) * span
    for i in range(int(flat.max(initial=0))):
        live = np.flatnonzero(flat > i)
        top = span - flat[live] + i  # Floyd's round i draws from 0..top
        pick = rng.integers(0, top + 1)
        pick = np.where(chosen[base[live] + pick], top, pick)
        chosen[base[live] + pick] = True
    return chosen.reshape(*sizes.shape, span)


def exact_subsets(rng: np.random.Generator, sizes: np.ndarray, n: int) -> np.ndarray:
    """Boolean [count, n] with exactly sizes[b] uniformly placed Trues in row b.

    Selection sampling: position i is taken with probability (still needed) / (positions
    left), one [count]-wide step per position.
    """
    u = rng.random((n, sizes.size))
    need = sizes.astype(np.int64)
    taken = np.empty((sizes.size, n), dtype=bool)
    for i in range(n):
        left = n - i
        pick = (u[i] * left < need) | (need >= left)
        taken[:, i] = pick
        need -= pick
    return taken


def ending_lengths(seq: np.ndarray) -> np.ndarray:
    """[count, n] dp: length of the longest strictly increasing subsequence ending at i.

    Positions run in a Python loop; each step compares against all earlier positions for the
    whole batch at once (position-major layout keeps those slices contiguous).
    """
    a = np.ascontiguousarray(seq.T)
    dp = np.ones_like(a, dtype=np.uint8)
    for i in range(1, a.shape[0]):
        dp[i] = ((a[:i] < a[i]) * dp[:i]).max(axis=0) + 1
    return np.ascontiguousarray(dp.T)


# ---------------------------------------------------------------- solving and checking


def parse_question(question: str) -> list[int]:
    tokens = question.split()
    if not tokens or not all(t.isascii() and t.isdigit() for t in tokens):
        raise CircuitlabError(f"an LIS question is space-separated numbers, got {question!r}")
    return [int(t) for t in tokens]


def solve(question: str, p: int) -> str:
    """LIS length by patience sorting, independent of the generator's quadratic dp.

    tails[k] is the smallest value that ends an increasing subsequence of length k+1.
    """
    tails: list[int] = []
    for value in parse_question(question):
        k = bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
        else:
            tails[k] = value
    return str(len(tails))


def verify(question: str, steps: Sequence[str], answer: str, p: int) -> Verdict:
    """Check each dp value against the chain's own earlier values, then the answer.

    Model output is never trusted to parse: a step is compared as text with the one token it
    should be, so anything malformed is just a wrong step.
    """
    values = parse_question(question)
    answer_correct = answer.split() == [solve(question, p)]
    dp: list[int] = []
    for i, step in enumerate(steps):
        if i == len(values):
            return Verdict.wrong(i, f"extra step: only {len(values)} numbers", answer_correct)
        below = (d for v, d in zip(values, dp, strict=False) if v < values[i])
        expected = 1 + max(below, default=0)
        if step.split() != [str(expected)]:
            return Verdict.wrong(i, f"dp[{i}] is {expected}, not {step!r}", answer_correct)
        dp.append(expected)
    if len(dp) < len(values):
        reason = f"chain stops after {len(dp)} of {len(values)} steps"
        return Verdict.wrong(len(dp), reason, answer_correct)
    best = str(max(dp))
    if answer.split() != [best]:
        reason = f"answer is max dp = {best}, not {answer!r}"
        return Verdict.wrong(len(steps), reason, answer_correct)
    return Verdict(True, None, answer_correct)


TASK = Task(
    name="lis",
    paper_sizes=PAPER_SIZES,
    min_size=MIN_SIZE,
    max_size=MAX_SIZE,
    uses_modulus=False,
    format=FORMAT,
    generate=generate,
    vocab=vocab,
    solve=solve,
    verify=verify,
)
