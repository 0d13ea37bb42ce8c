"""Edit distance: a DP task whose chain writes the DP table one row at a time.

Costs are insert 2, delete 2, substitute 3, and the table starts from dp[i][0] = i and
dp[0][j] = j (the official generator's i + j initialisation, kept on purpose: it is what the
paper's models learned). The question is `first | second` with the first string never the
longer; row i of the chain holds dp[i][1..len(second)].

Strings follow the official distribution: a random alphabet of 3..10 letters, a first string
of n letters, and a second string that is either random (n-3..n+2 letters) or the first one
after 1..n random edits. Edits, rejection and the DP all run over the whole batch at once.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import cache

import numpy as np

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.tasks.common import PAD_ID, ChainFormat, Task, TokenBatch, Verdict, Vocab

SEP = "<sep>"
BAR = "|"
COMMA = ","
FORMAT = ChainFormat(head=SEP, after=COMMA, tail=SEP)
PAPER_SIZES = (12, 16, 20)
MIN_SIZE = 4  # the second string may be 3 letters shorter and must keep at least one
MAX_SIZE = 40

INSERT = 2  # a step along a row: one more letter of the second string
DELETE = 2  # a step down a column: one more letter of the first string
SUBSTITUTE = 3

LETTERS = string.ascii_lowercase
LETTER_SET = frozenset(LETTERS)
MIN_ALPHABET, MAX_ALPHABET = 3, 10
RANDOM_SECOND = 0.4  # probability that the second string is drawn afresh, not edited
SHORTER, LONGER = 3, 2  # the second string has n-3..n+2 letters
CHUNK = 1 << 16  # examples generated at once, to bound memory


def max_value(size: int) -> int:
    """The largest DP value any size-n example can hold: 3n + 2.

    dp[i][j] <= j + 2i (start at dp[0][j] = j, then delete i letters) and likewise i + 2j,
    so dp[i][j] <= 2 min(i, j) + max(i, j). The first string has at most n letters and the
    second at most n + 2, which bounds every entry by 2n + (n + 2). (The official vocabulary
    was read off the data and is a little smaller, e.g. 0..59 for n = 20.)
    """
    return 3 * size + LONGER


@cache
def vocab(size: int, p: int) -> Vocab:
    """Numbers 0..3n+2, the letters, `|`, `,` and the separator (p is ignored)."""
    numbers = [str(v) for v in range(max_value(size) + 1)]
    return Vocab.of([*numbers, *LETTERS, BAR, COMMA, SEP])


# ---------------------------------------------------------------- generation


def generate(rng: np.random.Generator, size: int, count: int, p: int) -> TokenBatch:
    """`count` official-distribution string pairs with their DP rows and answers, as ids."""
    TASK.check_size(size)
    if count < 0:
        raise CircuitlabError(f"cannot generate {count} examples: the count must be >= 0")
    ids = vocab(size, p)
    width = size + LONGER
    batch = TokenBatch(
        question=np.zeros((count, size + 1 + width), dtype=np.int32),
        steps=np.zeros((count, size, width), dtype=np.int32),
        answer=np.zeros((count, 1), dtype=np.int32),
    )
    for start in range(0, count, CHUNK):
        rows = slice(start, min(count, start + CHUNK))
        view = TokenBatch(batch.question[rows], batch.steps[rows], batch.answer[rows])
        _fill(rng, size, ids, view)
    return batch


def _fill(rng: np.random.Generator, n: int, vocab: Vocab, out: TokenBatch) -> None:
    """Draw len(out) examples into `out`, whose arrays are views of the whole batch."""
    count = len(out)
    first, second, len1, len2 = string_pairs(rng, n, count)
    table = dp_table(first, second)
    letter_ids = np.concatenate([[PAD_ID], vocab.ids(list(LETTERS))]).astype(np.int32)
    out.question[:, :n] = letter_ids[first + 1]
    out.question[:, n] = vocab.id(BAR)
    out.question[:, n + 1 :] = letter_ids[second + 1]

    # Numbers come first in the vocabulary, so a value's id is a fixed offset away.
    offset = vocab.id("0")
    present = (np.arange(n)[:, None] < len1[:, None, None]) & (
        np.arange(second.shape[1]) < len2[:, None, None]
    )
    out.steps[...] = (table[:, 1:, 1:] + offset) * present
    out.answer[:, 0] = table[np.arange(count), len1, len2] + offset


def string_pairs(
    rng: np.random.Generator, n: int, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first [count, n], second [count, n+2], len1, len2): letters 0..25, -1 past the end.

    A drawn pair is rejected when the second string equals the first or its length leaves
    n-3..n+2; like the official recursion, the redraw starts over but keeps the edit count.
    The first string of the result is the shorter one.
    """
    width = n + LONGER
    edits = rng.integers(1, n + 1, count)
    s1 = np.empty((count, n), dtype=np.int8)
    s2 = np.full((count, width), -1, dtype=np.int8)
    len2 = np.empty(count, dtype=np.int64)
    pending = np.arange(count)
    while pending.size:
        a, b, lb = draw_pair(rng, n, edits[pending])
        same = (lb == n) & (b[:, :n] == a).all(axis=1)
        ok = ~same & (lb >= n - SHORTER) & (lb <= n + LONGER)
        done = pending[ok]
        s1[done], s2[done], len2[done] = a[ok], b[ok, :width], lb[ok]
        pending = pending[~ok]

    swap = len2 < n
    first = np.where(swap[:, None], s2[:, :n], s1)
    padded_s1 = np.concatenate([s1, np.full((count, LONGER), -1, np.int8)], axis=1)
    second = np.where(swap[:, None], padded_s1, s2)
    len1 = np.where(swap, len2, n)
    return first, second, len1, np.where(swap, n, len2)


def draw_pair(
    rng: np.random.Generator, n: int, edits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One official draw per row, before rejection: (s1 [k, n], s2 [k, >= n+2], len(s2))."""
    k = edits.size
    used = rng.integers(MIN_ALPHABET, MAX_ALPHABET + 1, k)
    alphabet = np.argsort(rng.random((k, len(LETTERS))), axis=1).astype(np.int8)
    s1 = rng.integers(0, used[:, None], (k, n))

    fresh = rng.random(k) < RANDOM_SECOND
    width = n + max(int(edits.max()), LONGER)  # room for every edit, and for fresh strings
    s2 = np.full((k, width), -1, dtype=np.int64)
    len2 = np.empty(k, dtype=np.int64)
    len2[fresh] = rng.integers(n - SHORTER, n + LONGER + 1, int(fresh.sum()))
    drawn = rng.integers(0, used[fresh, None], (int(fresh.sum()), n + LONGER))
    s2[fresh, : n + LONGER] = np.where(np.arange(n + LONGER) < len2[fresh, None], drawn, -1)
    edited = ~fresh
    s2[edited], len2[edited] = apply_edits(rng, s1[edited], used[edited], edits[edited], width)

    rows = np.arange(k)[:, None]
    return alphabet[rows, s1], np.where(s2 >= 0, alphabet[rows, np.maximum(s2, 0)], -1), len2


def apply_edits(
    rng: np.random.Generator, s: np.ndarray, used: np.ndarray, edits: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply edits[b] random edits to row b of s; returns ([k, width], lengths), -1 padded.

    Each edit is uniformly a deletion (only while more than 2 letters are left, otherwise it
    becomes an insertion, as in the official code), a substitution, or an insertion, at a
    uniform position and with a uniform letter of the row's alphabet. Rows are processed in
    order of decreasing edit count, so the rows still editing in a round are a prefix and
    each round is a few slice operations on that prefix.
    """
    k, n = s.shape
    order = np.argsort(-edits, kind="stable")
    out = np.full((k, width), -1, dtype=np.int8)
    out[:, :n] = s[order]
    length = np.full(k, n, dtype=np.int64)
    cols = np.arange(width)
    live_counts = np.bincount(edits, minlength=int(edits.max(initial=0)) + 1)[::-1].cumsum()[::-1]
    for round_ in range(int(edits.max(initial=0))):
        live = int(live_counts[round_ + 1])  # rows with more than round_ edits
        rows, index, ln = out[:live], np.arange(live), length[:live]
        kind = rng.integers(0, 3, live)
        delete = (kind == 0) & (ln > 2)
        insert = (kind == 2) | ((kind == 0) & ~delete)
        at = rng.integers(0, ln + insert)  # an insertion may also go after the end
        letter = rng.integers(0, used[order[:live]]).astype(np.int8)
        shifted = np.full_like(rows, -1)
        left = delete[:, None] & (cols >= at[:, None])
        right = insert[:, None] & (cols > at[:, None])
        shifted[:, :-1] = np.where(left[:, :-1], rows[:, 1:], rows[:, :-1])
        shifted[:, 1:] = np.where(right[:, 1:], rows[:, :-1], shifted[:, 1:])
        put = ~delete
        shifted[index[put], at[put]] = letter[put]
        out[:live] = shifted
        length[:live] += insert.astype(np.int64) - delete
    out[cols >= length[:, None]] = -1
    back = np.argsort(order)
    return out[back], length[back]


def dp_table(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[k, n1+1, n2+1] DP tables of the whole batch; entries past a string's end are junk.

    Python loops run over the cells of one table; each cell is computed for every example at
    once, laid out [i, j, example] so those operations run along contiguous memory.
    """
    k, n1 = first.shape
    n2 = second.shape[1]
    match, mismatch = np.int16(0), np.int16(SUBSTITUTE)
    a, b = np.ascontiguousarray(first.T), np.ascontiguousarray(second.T)
    table = np.empty((n1 + 1, n2 + 1, k), dtype=np.int16)
    table[0] = np.arange(n2 + 1, dtype=np.int16)[:, None]
    for i in range(1, n1 + 1):
        above, row = table[i - 1], table[i]
        step = np.where(a[i - 1] == b, match, mismatch)
        row[0] = i
        np.minimum(above[1:] + DELETE, above[:-1] + step, out=row[1:])
        for j in range(1, n2 + 1):
            np.minimum(row[j], row[j - 1] + INSERT, out=row[j])
    return np.ascontiguousarray(table.transpose(2, 0, 1))


# ---------------------------------------------------------------- solving and checking


def parse_question(question: str) -> tuple[str, str]:
    tokens = question.split()
    if tokens.count(BAR) != 1 or not all(t in LETTER_SET for t in tokens if t != BAR):
        raise CircuitlabError(f"an edit-distance question is 'letters | letters', got {question!r}")
    cut = tokens.index(BAR)
    return "".join(tokens[:cut]), "".join(tokens[cut + 1 :])


def solve(question: str, p: int) -> str:
    """Edit distance by memoised recursion over prefixes, independent of the batch DP."""
    first, second = parse_question(question)

    @cache
    def distance(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j  # the official initialisation, not 2i or 2j
        match = 0 if first[i - 1] == second[j - 1] else SUBSTITUTE
        return min(
            distance(i - 1, j) + DELETE,
            distance(i, j - 1) + INSERT,
            distance(i - 1, j - 1) + match,
        )

    return str(distance(len(first), len(second)))


def next_row(above: list[int], i: int, letter: str, second: str) -> list[int]:
    """Row i of the table (with column 0) from row i-1, the step a chain has to take."""
    row = [i]
    for j, other in enumerate(second, 1):
        match = 0 if letter == other else SUBSTITUTE
        row.append(min(above[j] + DELETE, row[j - 1] + INSERT, above[j - 1] + match))
    return row


def verify(question: str, steps: Sequence[str], answer: str, p: int) -> Verdict:
    """Check each row against the one the chain wrote before it, then the answer.

    Rows are compared as text with what they should be, so malformed model output is just a
    wrong row and never raises.
    """
    first, second = parse_question(question)
    answer_correct = answer.split() == [solve(question, p)]
    row = list(range(len(second) + 1))
    for index, step in enumerate(steps):
        if index == len(first):
            return Verdict.wrong(index, f"extra row: only {len(first)} rows", answer_correct)
        row = next_row(row, index + 1, first[index], second)
        got, want = step.split(), [str(v) for v in row[1:]]
        if len(got) != len(want):
            reason = f"row {index + 1} has {len(got)} entries, not {len(want)}"
            return Verdict.wrong(index, reason, answer_correct)
        if got != want:
            j = next(j for j, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            reason = f"row {index + 1} column {j + 1} is {want[j]}, not {got[j]!r}"
            return Verdict.wrong(index, reason, answer_correct)
    if len(steps) < len(first):
        reason = f"chain stops after {len(steps)} of {len(first)} rows"
        return Verdict.wrong(len(steps), reason, answer_correct)
    if answer.split() != [str(row[-1])]:
        reason = f"answer is the last entry {row[-1]}, not {answer!r}"
        return Verdict.wrong(len(steps), reason, answer_correct)
    return Verdict(True, None, answer_correct)


TASK = Task(
    name="ed",
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
