"""Arithmetic expressions over Z_p with n operators and random parentheses.

Generation follows the official process, vectorised over the batch: start from one random
number and n times replace a random number x by `a op b` (bracketed only where precedence
needs it) with a op b = x. Read backwards, the states are the chain of thought: each step
evaluates one operation and drops the brackets around its result, so the chain is not a
function of the question. The verifier therefore accepts any step that evaluates one
operation whose value can be computed in place without changing the expression's value.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks.common import PAD_ID, ChainFormat, Task, TokenBatch, Verdict, Vocab
from circuitlab.cot.tasks.modp import inverse

FORMAT = ChainFormat(head="=", after="=", tail="")
OPERATORS = ("+", "-", "*", "/")
SYMBOLS = (*OPERATORS, "(", ")", "=")
NUM0 = 2  # id of "0": numbers come right after <pad> and <eos>


def vocab(size: int, p: int) -> Vocab:
    return Vocab.of([*(str(v) for v in range(p)), *SYMBOLS])


def _symbol_id(symbol: str, p: int) -> int:
    return NUM0 + p + SYMBOLS.index(symbol)


# ------------------------------------------------------------------------------ generator

FREE_ANY = -1  # 0 * b = 0 for every b
FREE_NONZERO = -2  # 0 / b = 0 for every b != 0


@lru_cache(maxsize=32)
def _expansions(p: int) -> tuple[np.ndarray, np.ndarray]:
    """For each value x, every (a, op, b) with a op b = x, as padded tables.

    Each (a, op) pair is one equally likely choice, as in the official rejection sampler;
    where b is not determined (0 * b, 0 / b) it is drawn afterwards.
    Returns (table [p, K, 3], counts [p]).
    """
    rows: list[list[tuple[int, int, int]]] = []
    for x in range(p):
        pairs = []
        for a in range(p):
            pairs.append((a, 0, (x - a) % p))  # a + b = x
            pairs.append((a, 1, (a - x) % p))  # a - b = x
            if a != 0:
                pairs.append((a, 2, x * inverse(a, p) % p))  # a * b = x
            elif x == 0:
                pairs.append((0, 2, FREE_ANY))
            if a != 0 and x != 0:
                pairs.append((a, 3, a * inverse(x, p) % p))  # a / b = x
            elif a == 0 and x == 0:
                pairs.append((0, 3, FREE_NONZERO))
        rows.append(pairs)
    width = max(len(r) for r in rows)
    table = np.zeros((p, width, 3), dtype=np.int64)
    for x, pairs in enumerate(rows):
        table[x, : len(pairs)] = pairs
    return table, np.array([len(r) for r in rows])


def _expand(states: np.ndarray, step: int, rng: np.random.Generator, p: int) -> np.ndarray:
    """Replace one random number in every row by an equivalent bracketed-if-needed `a op b`.

    Works on whole [rows, width] arrays in the states' own small dtype: every state of step
    `step` holds exactly step + 1 numbers, so the chosen number's column is a plain lookup
    in the flat indices of all numbers, and the new state is the old one shifted right
    behind the replaced number, with the three or five new tokens written in.
    """
    rows, width = states.shape
    flat = states.reshape(-1)
    numbers = np.flatnonzero((flat >= NUM0) & (flat < NUM0 + p)).reshape(rows, step + 1)
    which = rng.integers(1, step + 2, size=rows, dtype=np.int8)  # there are step + 1 numbers
    at = np.arange(rows)
    chosen = numbers[at, which - 1]  # flat index of the chosen number
    pos = chosen - at * width
    x = flat[chosen] - NUM0

    table, counts = _expansions(p)
    choice = (rng.random(rows) * counts[x]).astype(np.intp)
    flat_choice = x.astype(np.intp) * table.shape[1] + choice
    a, op, b = np.take(table.reshape(-1, 3), flat_choice, axis=0).T
    free = b < 0  # only when x == 0: 0 * b or 0 / b, b drawn now (nonzero for division)
    if free.any():
        b = b.copy()
        b[free] = rng.integers((b[free] == FREE_NONZERO).astype(np.int64), p)

    left = np.where(pos > 0, flat[chosen - 1], PAD_ID)
    right = np.where(pos + 1 < width, flat[np.minimum(chosen + 1, flat.size - 1)], PAD_ID)
    sub, mul, div = (_symbol_id(s, p) for s in "-*/")
    add_sub = op <= 1
    brackets = (left == div) | (add_sub & ((left == mul) | (left == sub)))
    brackets |= add_sub & ((right == mul) | (right == div))

    # what follows the replaced number moves right by 2 (a op b) or 4 (( a op b ))
    shifted = np.zeros_like(states)
    shifted[:, 2:] = states[:, :-2]
    if brackets.any():
        shifted[brackets, 4:] = states[brackets, :-4]
    # columns before the replaced number keep their token; arithmetic selection on small
    # ints is several times faster than np.where, as is comparing contiguous rows
    column = np.arange(width, dtype=np.int16)
    before = np.repeat(pos.astype(np.int16), width).reshape(rows, width) > column
    out = states * before + shifted * ~before
    dtype = states.dtype
    a_id, b_id = (a + NUM0).astype(dtype), (b + NUM0).astype(dtype)
    op_id = (op + NUM0 + p).astype(dtype)
    start = chosen  # the replaced number's flat index is where its expansion starts
    out_flat = out.reshape(-1)
    out_flat[start] = np.where(brackets, dtype.type(_symbol_id("(", p)), a_id)
    out_flat[start + 1] = np.where(brackets, a_id, op_id)
    out_flat[start + 2] = np.where(brackets, op_id, b_id)
    start = start[brackets]
    out_flat[start + 3] = b_id[brackets]
    out_flat[start + 4] = _symbol_id(")", p)
    return out


def generate(rng: np.random.Generator, size: int, count: int, p: int) -> TokenBatch:
    width = 4 * size + 1
    dtype = np.int8 if NUM0 + p + len(SYMBOLS) < 128 else np.int32
    state = np.zeros((count, width), dtype=dtype)
    state[:, 0] = rng.integers(0, p, size=count) + NUM0
    history = [state]
    for step in range(size):
        history.append(_expand(history[-1], step, rng, p))
    steps = np.stack(history[-2:0:-1], axis=1) if size > 1 else np.zeros((count, 0, 1), np.int32)
    return TokenBatch(question=history[-1], steps=steps, answer=history[0][:, :1].copy())


# --------------------------------------------------------------------------------- solver


def solve(question: str, p: int) -> str:
    """Value of the expression by recursive descent with the usual precedence, mod p."""
    tokens = question.split()
    value, end = _parse_sum(tokens, 0, p)
    if end != len(tokens):
        raise CircuitlabError(f"unexpected {tokens[end]!r} at token {end} in {question!r}")
    return str(value)


def _parse_sum(tokens: list[str], i: int, p: int) -> tuple[int, int]:
    value, i = _parse_product(tokens, i, p)
    while i < len(tokens) and tokens[i] in ("+", "-"):
        rhs, j = _parse_product(tokens, i + 1, p)
        value = (value + rhs) % p if tokens[i] == "+" else (value - rhs) % p
        i = j
    return value, i


def _parse_product(tokens: list[str], i: int, p: int) -> tuple[int, int]:
    value, i = _parse_atom(tokens, i, p)
    while i < len(tokens) and tokens[i] in ("*", "/"):
        rhs, j = _parse_atom(tokens, i + 1, p)
        if tokens[i] == "*":
            value = value * rhs % p
        elif rhs == 0:
            raise CircuitlabError(f"division by zero in {' '.join(tokens)!r}")
        else:
            value = value * inverse(rhs, p) % p
        i = j
    return value, i


def _parse_atom(tokens: list[str], i: int, p: int) -> tuple[int, int]:
    if i >= len(tokens):
        raise CircuitlabError(f"expression {' '.join(tokens)!r} ends too early")
    if tokens[i] == "(":
        value, j = _parse_sum(tokens, i + 1, p)
        if j >= len(tokens) or tokens[j] != ")":
            raise CircuitlabError(f"unbalanced parenthesis in {' '.join(tokens)!r}")
        return value, j + 1
    if tokens[i].isdigit() and int(tokens[i]) < p:
        return int(tokens[i]), i + 1
    raise CircuitlabError(f"unexpected {tokens[i]!r} at token {i} in {' '.join(tokens)!r}")


# ------------------------------------------------------------------------------- verifier


def _is_number(token: str, p: int) -> bool:
    return token.isdigit() and int(token) < p


def one_step_reductions(tokens: Sequence[str], p: int) -> set[tuple[str, ...]]:
    """Every expression reachable by evaluating one operation in place.

    `x L a op b R y` may evaluate `a op b` first when that cannot change the value:
    never after `/`; `+`/`-` not after `*` or `-`, nor before `*` or `/`. Brackets left
    around a single number disappear in the same step.
    """
    out = set()
    for i in range(1, len(tokens) - 1):
        op = tokens[i]
        operands = (tokens[i - 1], tokens[i + 1])
        if op not in OPERATORS or not all(_is_number(t, p) for t in operands):
            continue
        left = tokens[i - 2] if i >= 2 else None
        right = tokens[i + 2] if i + 2 < len(tokens) else None
        add_sub = op in ("+", "-")
        if left == "/" or (add_sub and (left in ("*", "-") or right in ("*", "/"))):
            continue
        a, b = int(tokens[i - 1]), int(tokens[i + 1])
        if op == "/" and b == 0:
            continue
        value = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        value = value % p if value is not None else a * inverse(b, p) % p
        start, stop = i - 1, i + 2
        if left == "(" and right == ")":
            start, stop = i - 2, i + 3
        out.add((*tokens[:start], str(value), *tokens[stop:]))
    return out


def verify(question: str, steps: Sequence[str], answer: str, p: int) -> Verdict:
    try:
        answer_correct = answer.strip() == solve(question, p)
    except CircuitlabError:
        answer_correct = False
    previous = tuple(question.split())
    for index, step in enumerate([*steps, answer]):
        current = tuple(step.split())
        if current not in one_step_reductions(previous, p):
            what = "the answer" if index == len(steps) else f"step {index}"
            reason = f"{what} {step!r} is not one evaluation away from {' '.join(previous)!r}"
            return Verdict.wrong(index, reason, answer_correct)
        previous = current
    if len(previous) != 1:
        return Verdict.wrong(len(steps), "the answer is not a single number", answer_correct)
    return Verdict.ok() if answer_correct else Verdict.wrong(len(steps), "wrong", False)


TASK = Task(
    name="arithmetic",
    paper_sizes=(4, 5, 6),
    min_size=1,
    max_size=64,
    uses_modulus=True,
    format=FORMAT,
    generate=generate,
    vocab=vocab,
    solve=solve,
    verify=verify,
)
