"""Systems of n linear equations in n variables over Z_p with a unique solution.

The chain of thought is Gauss-Jordan elimination, one column per step, with the official
pivot rule (the first row at or below the diagonal with a nonzero entry). State s is the
system after eliminating columns 0..s-1; eliminated columns are written in a collapsed form
(coefficient 0 omitted, coefficient 1 written as the bare variable), so the layout of every
state depends only on n and s. The generator exploits that: it renders each state by
gathering numbers into a fixed token template instead of formatting strings.

The solver (Cramer's rule over the integers) and the verifier (a one-column elimination and
a string renderer in plain Python) are separate implementations from the vectorised
generator, so the tests that run generated chains through them cross-check all three.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks.common import (
    PAD_ID,
    ChainFormat,
    Task,
    TokenBatch,
    Verdict,
    Vocab,
    split_on,
)
from circuitlab.cot.tasks.modp import check_modulus, inverse, inverse_table

FORMAT = ChainFormat(head="<sep>", after="<sep>", tail="")
SYMBOLS = ("+", "=", ",", "<sep>")
LETTERS = string.ascii_lowercase

Matrix = list[list[int]]  # an augmented system: n rows of n coefficients and a right side


def vocab(size: int, p: int) -> Vocab:
    return Vocab.of([*(str(v) for v in range(p)), *LETTERS[:size], *SYMBOLS])


# ------------------------------------------------------------------------------ generator


def _template(n: int, s: int, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Token layout of state s: (constant ids, matrix positions), one entry per token.

    A position of -1 means the constant id is the token; otherwise the token is the number
    at that flat index of the n x (n+1) matrix.
    """
    const: list[int] = []
    pos: list[int] = []

    def emit_const(token: str) -> None:
        const.append(vocab.id(token))
        pos.append(-1)

    def emit_number(row: int, col: int) -> None:
        const.append(PAD_ID)
        pos.append(row * (n + 1) + col)

    for i in range(n):
        if i:
            emit_const(",")
        first = True
        for j in range(n):
            if j < s and j != i:
                continue  # an eliminated column holds 0 off the diagonal
            if not first:
                emit_const("+")
            first = False
            if j >= s:
                emit_number(i, j)
            emit_const(LETTERS[j])
        emit_const("=")
        emit_number(i, n)
    return np.array(const, dtype=np.int32), np.array(pos, dtype=np.int64)


def _render(states: np.ndarray, s: int, vocab: Vocab, p: int) -> np.ndarray:
    """[B, n, n+1] matrices of state s -> [B, L] token ids."""
    rows, n = states.shape[0], states.shape[1]
    const, pos = _template(n, s, vocab)
    numbers = vocab.ids([str(v) for v in range(p)])
    gathered = numbers[states.reshape(rows, n * (n + 1))[:, np.maximum(pos, 0)]]
    return np.where(pos >= 0, gathered, const).astype(np.int32)


def _eliminate(m: np.ndarray, j: int, inv: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """One Gauss-Jordan column on a batch: (next matrices, which rows had a pivot).

    Rows without a pivot are singular; they get garbage (inv[0] = 0) and are masked later,
    which is cheaper than branching per example.
    """
    m = m.copy()
    nonzero = m[:, j:, j] != 0
    has_pivot = nonzero.any(axis=1)
    pivot = j + nonzero.argmax(axis=1)
    at = np.arange(len(m))
    pivot_row = m[at, pivot]
    m[at, pivot] = m[:, j]
    pivot_row = pivot_row * inv[pivot_row[:, j]][:, None] % p
    m[:, j] = pivot_row
    factors = m[:, :, j].copy()
    factors[:, j] = 0
    m = (m - factors[:, :, None] * pivot_row[:, None, :]) % p
    return m, has_pivot


def _draw_states(rng: np.random.Generator, n: int, count: int, p: int) -> list[np.ndarray]:
    """States 0..n of `count` random nonsingular systems, drawing extra and rejecting."""
    inv = inverse_table(p).astype(np.int32)
    nonsingular = float(np.prod([1.0 - p**-k for k in range(1, n + 1)]))
    kept: list[list[np.ndarray]] = []
    have = 0
    while have < count or not kept:  # one round even for count 0, to keep the shapes
        # a little over the expected need, so one round almost always suffices
        draw = int((count - have) / nonsingular * 1.05) + 16
        states = [rng.integers(0, p, size=(draw, n, n + 1), dtype=np.int32)]
        ok = np.ones(draw, dtype=bool)
        for j in range(n):
            nxt, has_pivot = _eliminate(states[-1], j, inv, p)
            states.append(nxt)
            ok &= has_pivot
        kept.append([st[ok] for st in states])
        have += int(ok.sum())
    return [np.concatenate([k[s] for k in kept])[:count] for s in range(n + 1)]


def generate(rng: np.random.Generator, size: int, count: int, p: int) -> TokenBatch:
    check_modulus(p)
    n = size
    voc = vocab(n, p)
    states = _draw_states(rng, n, count, p)
    question = _render(states[0], 0, voc, p)
    answer = _render(states[n], n, voc, p)
    chain = [_render(states[s], s, voc, p) for s in range(1, n)]
    width = max((c.shape[1] for c in chain), default=1)
    steps = np.zeros((count, n - 1, width), dtype=np.int32)
    for k, c in enumerate(chain):
        steps[:, k, : c.shape[1]] = c
    return TokenBatch(question, steps, answer)


# ------------------------------------------------------------------------------ parsing


def _parse_number(token: str, p: int) -> int:
    if not token.isdigit() or int(token) >= p or str(int(token)) != token:
        raise ValueError(f"{token!r} is not a number in 0..{p - 1}")
    return int(token)


def _parse_row(tokens: list[str], n: int, p: int) -> list[int]:
    if tokens.count("=") != 1:
        raise ValueError("an equation needs exactly one '='")
    cut = tokens.index("=")
    left, right = tokens[:cut], tokens[cut + 1 :]
    if len(right) != 1:
        raise ValueError("the right side of an equation is one number")
    row = [0] * (n + 1)
    row[n] = _parse_number(right[0], p)
    seen: set[int] = set()
    for term in split_on(left, "+") if left else []:
        if len(term) not in (1, 2) or term[-1] not in LETTERS[:n]:
            raise ValueError(f"term {' '.join(term)!r} is not 'coefficient variable' or 'variable'")
        var = LETTERS.index(term[-1])
        if var in seen:
            raise ValueError(f"variable {term[-1]} appears twice in one equation")
        seen.add(var)
        row[var] = _parse_number(term[0], p) if len(term) == 2 else 1
    if not seen:
        raise ValueError("an equation has no terms")
    return row


def _parse(text: str, n: int, p: int) -> Matrix:
    """An n-equation system in any state's format (missing terms 0, bare variables 1)."""
    rows = split_on(text.split(), ",")
    if len(rows) != n:
        raise ValueError(f"{len(rows)} equations where {n} are expected")
    return [_parse_row(r, n, p) for r in rows]


def _parse_question(question: str, p: int) -> Matrix:
    """The question fixes n: one equation per variable."""
    n = question.split().count(",") + 1
    if n > len(LETTERS):
        raise CircuitlabError(f"a question with {n} equations has more than 26 variables")
    try:
        return _parse(question, n, p)
    except ValueError as e:
        raise CircuitlabError(f"cannot parse equation question {question!r}: {e}") from None


# ------------------------------------------------------------------------------ solver


def _determinant(m: Matrix) -> int:
    """Exact integer determinant (Bareiss), so the solver shares no modular code with the
    generator's elimination; reducing mod p happens only at the end."""
    a = [row[:] for row in m]
    n = len(a)
    sign, prev = 1, 1
    for k in range(n - 1):
        if a[k][k] == 0:
            swap = next((i for i in range(k + 1, n) if a[i][k] != 0), None)
            if swap is None:
                return 0
            a[k], a[swap] = a[swap], a[k]
            sign = -sign
        for i in range(k + 1, n):
            for j in range(k + 1, n):
                a[i][j] = (a[i][j] * a[k][k] - a[i][k] * a[k][j]) // prev
        prev = a[k][k]
    return sign * a[n - 1][n - 1]


def _answer_text(values: Sequence[int]) -> str:
    return " , ".join(f"{LETTERS[i]} = {v}" for i, v in enumerate(values))


def solve(question: str, p: int) -> str:
    """Cramer's rule: x_i = det(A with column i replaced by b) / det(A), all mod p."""
    check_modulus(p)
    m = _parse_question(question, p)
    n = len(m)
    coefficients = [row[:n] for row in m]
    det = _determinant(coefficients) % p
    if det == 0:
        raise CircuitlabError(f"the system {question!r} has no unique solution mod {p}")
    scale = inverse(det, p)
    values = []
    for i in range(n):
        replaced = [[*row[:i], row[n], *row[i + 1 : n]] for row in m]
        values.append(_determinant(replaced) * scale % p)
    for row in m:  # a cheap guard against a wrong determinant
        assert sum(c * x for c, x in zip(row[:n], values, strict=True)) % p == row[n]
    return _answer_text(values)


# ------------------------------------------------------------------------------ verifier


def _eliminate_one(m: Matrix, j: int, p: int) -> Matrix | None:
    """One Gauss-Jordan column with the official pivot rule; None if column j has no pivot."""
    pivot = next((i for i in range(j, len(m)) if m[i][j] % p), None)
    if pivot is None:
        return None
    m = [row[:] for row in m]
    m[j], m[pivot] = m[pivot], m[j]
    scale = inverse(m[j][j], p)
    m[j] = [v * scale % p for v in m[j]]
    for i, row in enumerate(m):
        if i != j and row[j]:
            factor = row[j]
            m[i] = [(v - factor * w) % p for v, w in zip(row, m[j], strict=True)]
    return m


def _state_text(m: Matrix, s: int) -> str:
    """The official text of state s: columns before s collapse (0 omitted, 1 bare)."""
    n = len(m)
    equations = []
    for row in m:
        terms = []
        for j in range(n):
            if j >= s or row[j] not in (0, 1):
                terms.append(f"{row[j]} {LETTERS[j]}")
            elif row[j] == 1:
                terms.append(LETTERS[j])
        equations.append(f"{' + '.join(terms)} = {row[n]}")
    return " , ".join(equations)


def verify(question: str, steps: Sequence[str], answer: str, p: int) -> Verdict:
    """Check each state against one elimination of the state written before it.

    Validity is step-local: step k is judged against the model's own step k-1, so a chain
    is not blamed twice for one mistake. The answer is the state after the last step and
    must be the final (identity) state. Raises only for a bad question, never for bad
    model output.
    """
    answer_correct = answer.split() == solve(question, p).split()
    prev = _parse_question(question, p)
    n = len(prev)
    for k, text in enumerate([*steps, answer]):
        if k == n - 1 and k < len(steps):
            return Verdict.wrong(k, f"extra step: {n - 1} steps are needed", answer_correct)
        expected = _eliminate_one(prev, k, p)
        if expected is None:
            reason = f"the previous state has no pivot in column {k}"
            return Verdict.wrong(k, reason, answer_correct)
        if text.split() != _state_text(expected, k + 1).split():
            try:
                _parse(text, n, p)
            except ValueError as e:
                return Verdict.wrong(k, f"unparsable: {e}", answer_correct)
            return Verdict.wrong(k, f"not the elimination of column {k}", answer_correct)
        if k == len(steps) and k < n - 1:
            reason = f"stopped after {k} steps; {n - 1} are needed"
            return Verdict.wrong(k, reason, answer_correct)
        prev = expected  # equal tokens, and the rendering loses nothing, so equal states
    return Verdict(True, None, answer_correct)


TASK = Task(
    name="equation",
    paper_sizes=(3, 4, 5),
    min_size=1,
    max_size=26,
    uses_modulus=True,
    format=FORMAT,
    generate=generate,
    vocab=vocab,
    solve=solve,
    verify=verify,
)
