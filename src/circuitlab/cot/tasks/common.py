"""What the four cot tasks share: vocabularies, token batches, chain formats, verdicts.

Generators work on whole batches of token ids (numpy), not on one example at a time: that
is what makes data generation several times faster than the official per-example scripts.
A `TokenBatch` holds the question, the chain steps and the answer of every example as id
arrays; `render_jsonl` turns a batch into JSON lines with vectorised byte operations, and
`to_examples` turns it into Python objects for the verifiers, the tests and the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from circuitlab.core.errors import CircuitlabError

PAD = "<pad>"
EOS = "<eos>"
PAD_ID = 0
EOS_ID = 1


@dataclass(frozen=True)
class Vocab:
    """A small closed vocabulary; id 0 is padding and id 1 is end-of-sequence."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[:2] != (PAD, EOS):
            raise ValueError("a vocabulary starts with <pad> and <eos>")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("a vocabulary has no repeated tokens")
        for token in self.tokens:
            if not token or any(c in token for c in ' "\\\n'):
                raise ValueError(f"token {token!r} cannot be rendered into JSON lines as is")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def of(cls, tokens: Sequence[str]) -> Vocab:
        return cls((PAD, EOS, *tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise CircuitlabError(
                f"token {token!r} is not in this task's vocabulary of {len(self)} tokens"
            ) from None

    def encode(self, text: str) -> list[int]:
        """Ids of the space-separated tokens of `text` (no end-of-sequence added)."""
        return [self.id(t) for t in text.split()]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`, skipping padding and stopping at the first end-of-sequence."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i != PAD_ID:
                out.append(self.tokens[i])
        return " ".join(out)

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Ids of `tokens` as an array, for table lookups inside vectorised generators."""
        return np.array([self.id(t) for t in tokens], dtype=np.int32)


@dataclass(frozen=True)
class ChainFormat:
    """Where the separators go in a task's official sequence.

    text = question head (step after)* tail answer, where `tail` only appears when the
    chain has steps and `after` may be empty (LIS writes its dp values without separators).
    Direct answers are `question head answer`.
    """

    head: str
    after: str
    tail: str

    def join(self, question: str, steps: Sequence[str], answer: str) -> str:
        parts = [question, self.head]
        for step in steps:
            parts.append(step)
            if self.after:
                parts.append(self.after)
        if steps and self.tail:
            parts.append(self.tail)
        parts.append(answer)
        return " ".join(parts)

    def split(self, continuation: str) -> tuple[list[str], str]:
        """Steps and answer of what follows `question head`, e.g. a model's generation.

        Malformed text still splits (into steps that will fail verification): the verifier,
        not the parser, decides what is wrong.
        """
        tokens = continuation.split()
        if self.tail:
            if self.tail in tokens:
                cut = len(tokens) - 1 - tokens[::-1].index(self.tail)
                body, answer = tokens[:cut], tokens[cut + 1 :]
            else:
                body, answer = [], tokens
            if not self.after:
                return list(body), " ".join(answer)
            pieces = split_on(body, self.after)
            if pieces and not pieces[-1]:
                pieces.pop()  # the separator after the last step
            return [" ".join(p) for p in pieces], " ".join(answer)
        pieces = split_on(tokens, self.after)
        return [" ".join(p) for p in pieces[:-1]], " ".join(pieces[-1])


def split_on(tokens: Sequence[str], sep: str) -> list[list[str]]:
    """Tokens cut at every `sep` (which is dropped); n separators give n + 1 pieces."""
    pieces: list[list[str]] = [[]]
    for t in tokens:
        if t == sep:
            pieces.append([])
        else:
            pieces[-1].append(t)
    return pieces


@dataclass(frozen=True)
class Example:
    """One problem: its question, chain-of-thought steps and answer, as official-format text."""

    task: str
    size: int
    question: str
    chain: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class Verdict:
    """Whether a chain holds up, and where it first goes wrong.

    Steps are numbered from 0; index len(steps) is the final answer. `first_error` is None
    exactly when `valid` is True.
    """

    valid: bool
    first_error: int | None
    answer_correct: bool
    reason: str = ""

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True, None, True, "")

    @classmethod
    def wrong(cls, at: int, reason: str, answer_correct: bool) -> Verdict:
        return cls(False, at, answer_correct, reason)


@dataclass
class TokenBatch:
    """Token ids of a batch of examples; 0 (padding) may appear anywhere and is dropped.

    question: [B, Lq]; steps: [B, S, Ls] (a step that is all padding is absent; present
    steps come first); answer: [B, La].
    """

    question: np.ndarray
    steps: np.ndarray
    answer: np.ndarray

    def __len__(self) -> int:
        return int(self.question.shape[0])

    def select(self, rows: np.ndarray | slice) -> TokenBatch:
        return TokenBatch(self.question[rows], self.steps[rows], self.answer[rows])

    @staticmethod
    def concat(batches: Sequence[TokenBatch]) -> TokenBatch:
        return TokenBatch(
            _concat_padded([b.question for b in batches]),
            _concat_padded([b.steps for b in batches]),
            _concat_padded([b.answer for b in batches]),
        )

    def question_keys(self) -> np.ndarray:
        """One opaque value per example that identifies its question (for deduplication)."""
        return row_keys(compact(self.question))

    def step_counts(self) -> np.ndarray:
        return (self.steps != PAD_ID).any(axis=2).sum(axis=1)


def _concat_padded(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0, padding every other axis to the largest size."""
    shape = [max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim)]
    dtype = np.result_type(*arrays)
    out = np.zeros((sum(a.shape[0] for a in arrays), *shape), dtype=dtype)
    start = 0
    for a in arrays:
        out[(slice(start, start + a.shape[0]), *(slice(0, s) for s in a.shape[1:]))] = a
        start += a.shape[0]
    return out


def row_keys(ids: np.ndarray) -> np.ndarray:
    """Each row of a 2-d id array as one opaque value, so rows can be hashed and sorted."""
    rows = np.ascontiguousarray(ids.astype(np.int16))
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()


def compact(ids: np.ndarray) -> np.ndarray:
    """Move the non-padding ids of each row (last axis) to the front, keeping their order,
    and drop the columns that are padding in every row."""
    pad = ids == PAD_ID
    if (pad[..., :-1] & ~pad[..., 1:]).any():
        order = np.argsort(pad, axis=-1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=-1)
        pad = ids == PAD_ID
    used = int((~pad).sum(axis=-1).max(initial=0))
    return ids[..., : max(used, 1)]


@dataclass(frozen=True)
class Task:
    """A cot task: its generator, vocabulary, solver and chain verifier.

    generate(rng, size, count, p) -> TokenBatch   (p is ignored by LIS and ED)
    vocab(size, p) -> Vocab
    solve(question, p) -> answer, written independently of the generator
    verify(question, steps, answer, p) -> Verdict
    """

    name: str
    paper_sizes: tuple[int, ...]
    min_size: int
    max_size: int
    uses_modulus: bool
    format: ChainFormat
    generate: Callable[[np.random.Generator, int, int, int], TokenBatch]
    vocab: Callable[[int, int], Vocab]
    solve: Callable[[str, int], str]
    verify: Callable[[str, Sequence[str], str, int], Verdict]

    def check_size(self, size: int) -> None:
        if not self.min_size <= size <= self.max_size:
            raise CircuitlabError(
                f"--size {size} is out of range for task {self.name}: use "
                f"{self.min_size}..{self.max_size} (the paper uses {list(self.paper_sizes)})"
            )

    def text(self, example: Example, fmt: str) -> str:
        steps = example.chain if fmt == "cot" else ()
        return self.format.join(example.question, steps, example.answer)

    def to_examples(self, batch: TokenBatch, size: int, p: int) -> list[Example]:
        vocab = self.vocab(size, p)
        out = []
        for q, steps, a in zip(batch.question, batch.steps, batch.answer, strict=True):
            chain = tuple(s for s in (vocab.decode(row) for row in steps) if s)
            out.append(Example(self.name, size, vocab.decode(q), chain, vocab.decode(a)))
        return out


# ---------------------------------------------------------------- vectorised JSON lines


def _byte_table(vocab: Vocab) -> np.ndarray:
    """[V, W] uint8: each token as ' token', zero-filled; padding is all zeros.

    <eos> never appears in a rendered field, so it does not widen the table.
    """
    width = 1 + max(len(t) for t in vocab.tokens[EOS_ID + 1 :])
    table = np.zeros((len(vocab), width), dtype=np.uint8)
    for i, token in enumerate(vocab.tokens):
        if i > EOS_ID:
            raw = (" " + token).encode("ascii")
            table[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return table


def _field(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[B, L] ids -> [B, L*W] bytes of 'tok tok tok' (zeros are dropped later)."""
    chars = table[compact(ids)].reshape(ids.shape[0], -1)
    chars[:, 0] = 0  # the space in front of the first token
    return chars


def _const(text: str, rows: int, present: np.ndarray | None = None) -> np.ndarray:
    raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    out = np.broadcast_to(raw, (rows, raw.size))
    if present is not None:
        out = out * present[:, None].astype(np.uint8)
    return out


def render_jsonl(
    task: Task,
    batch: TokenBatch,
    vocab: Vocab,
    size: int,
    formats: Sequence[str],
    split: str,
) -> dict[str, bytes]:
    """JSON lines of every example in `batch`, in each of `formats`, without a per-example
    Python loop.

    Fields: task, size, format, split, question, chain (list of step strings, empty for
    direct), answer, text (the official sequence in that format). The token fields are
    turned into bytes once and shared by the formats; rows are rendered a few thousand at
    a time so the byte buffers stay in cache.
    """
    table = _byte_table(vocab)
    chunks: dict[str, list[bytes]] = {fmt: [] for fmt in formats}
    for lo in range(0, len(batch), RENDER_ROWS):
        fields = _Fields.of(batch.select(slice(lo, lo + RENDER_ROWS)), table, formats)
        for fmt in formats:
            chunks[fmt].append(fields.lines(task, size, fmt, split))
    return {fmt: b"".join(parts) for fmt, parts in chunks.items()}


RENDER_ROWS = 4096


@dataclass
class _Fields:
    """The byte form of each token field of a few thousand rows (see `_field`)."""

    question: np.ndarray
    answer: np.ndarray
    steps: list[np.ndarray]
    present: np.ndarray  # [rows, steps]: which steps each row has

    @classmethod
    def of(cls, batch: TokenBatch, table: np.ndarray, formats: Sequence[str]) -> _Fields:
        rows = len(batch)
        with_steps = "cot" in formats and batch.steps.shape[1] > 0
        present = (batch.steps != PAD_ID).any(axis=2) if with_steps else np.zeros((rows, 0), bool)
        steps = [_field(table, batch.steps[:, i]) for i in range(present.shape[1])]
        return cls(_field(table, batch.question), _field(table, batch.answer), steps, present)

    def lines(self, task: Task, size: int, fmt: str, split: str) -> bytes:
        rows, present = len(self.question), self.present
        steps = self.steps if fmt == "cot" else []
        head = f'{{"task": "{task.name}", "size": {size}, "format": "{fmt}", "split": "{split}", '
        parts = [_const(head + '"question": "', rows), self.question]
        parts.append(_const('", "chain": [', rows))
        for i, step in enumerate(steps):
            parts += [_const('"' if i == 0 else ', "', rows, present[:, i]), step]
            parts.append(_const('"', rows, present[:, i]))
        parts += [_const('], "answer": "', rows), self.answer, _const('", "text": "', rows)]
        parts += [self.question, _const(f" {task.format.head}", rows)]
        for i, step in enumerate(steps):
            parts += [_const(" ", rows, present[:, i]), step]
            if task.format.after:
                parts.append(_const(f" {task.format.after}", rows, present[:, i]))
        if steps and task.format.tail:
            parts.append(_const(f" {task.format.tail}", rows, present.any(axis=1)))
        parts += [_const(" ", rows), self.answer, _const('"}\n', rows)]
        flat = np.concatenate(parts, axis=1).ravel()
        return flat[flat != 0].tobytes()


def token_lengths(task: Task, batch: TokenBatch, fmt: str) -> np.ndarray:
    """Tokens in each example's text (without end-of-sequence), vectorised."""
    n = (batch.question != PAD_ID).sum(axis=1) + 1 + (batch.answer != PAD_ID).sum(axis=1)
    if fmt == "cot" and batch.steps.shape[1] > 0:
        present = (batch.steps != PAD_ID).any(axis=2)
        n = n + (batch.steps != PAD_ID).sum(axis=(1, 2))
        if task.format.after:
            n = n + present.sum(axis=1)
        if task.format.tail:
            n = n + present.any(axis=1)
    return n
