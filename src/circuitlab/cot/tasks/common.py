"""What the four cot tasks share: vocabularies, token batches, chain formats, verdicts.

Generators work on whole batches of token ids (numpy), not on one example at a time: that
is what makes data generation several times faster than the official per-example scripts.
A `TokenBatch` holds the question, the chain steps and the answer of every example as id
arrays; `iter_jsonl` (and `render_jsonl`) turn a batch into JSON lines with vectorised
byte operations, and `to_examples` turns it into Python objects for the verifiers, the
tests and the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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

    def step_presence(self) -> np.ndarray:
        """[B, S] bool: which steps each example has."""
        return tokens_per_row(self.steps) > 0

    def step_counts(self) -> np.ndarray:
        return self.step_presence().sum(axis=1)


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
    if ids.shape[-1] == 0:
        return ids
    pad = ids == PAD_ID
    if _pads_before_tokens(pad.reshape(-1, pad.shape[-1])):
        order = np.argsort(pad, axis=-1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=-1)
    used = int(tokens_per_row(ids).max(initial=0))
    return ids[..., : max(used, 1)]


def _pads_before_tokens(pad: np.ndarray) -> bool:
    """Whether padding comes before a token in some row of a 2-d padding mask.

    Compares neighbours in the flat mask (one fast contiguous pass) and discounts the pairs
    that straddle two rows, instead of comparing strided column slices.
    """
    flat = pad.reshape(-1)
    joined = np.count_nonzero(flat[:-1] > flat[1:])
    across_rows = np.count_nonzero(pad[:-1, -1] > pad[1:, 0])
    return joined > across_rows


def tokens_per_row(ids: np.ndarray) -> np.ndarray:
    """How many non-padding ids each row (last axis) holds, as int64.

    einsum adds up short rows several times faster than .sum(axis=-1); it adds in the
    input's dtype, so bytes only carry the count while a row cannot overflow them.
    """
    present = (ids != PAD_ID).view(np.uint8)
    if ids.shape[-1] > np.iinfo(np.uint8).max:
        present = present.astype(np.int32)
    return np.einsum("...j->...", present).astype(np.int64)


@dataclass(frozen=True)
class Task:
    """A cot task: its generator, vocabulary, solver and chain verifier.

    generate(rng, size, count, p) -> TokenBatch
    vocab(size, p) -> Vocab
    solve(question, p) -> answer, written independently of the generator
    verify(question, steps, answer, p) -> Verdict

    p is the task's one argument: the modulus of arithmetic and equations, the number range
    of LIS (0: the official 250); ED ignores it. DataConfig.task_arg picks it.
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


def render_jsonl(
    task: Task,
    batch: TokenBatch,
    vocab: Vocab,
    size: int,
    formats: Sequence[str],
    split: str,
) -> dict[str, bytes]:
    """JSON lines of every example in `batch`, in each of `formats`, without a per-example
    Python loop (see `iter_jsonl`, which yields the same bytes in pieces).
    """
    chunks: dict[str, list[bytes]] = {fmt: [] for fmt in formats}
    for rendered in iter_jsonl(task, batch, vocab, size, formats, split):
        for fmt, text in rendered.items():
            chunks[fmt].append(text)
    return {fmt: b"".join(parts) for fmt, parts in chunks.items()}


def iter_jsonl(
    task: Task,
    batch: TokenBatch,
    vocab: Vocab,
    size: int,
    formats: Sequence[str],
    split: str,
) -> Iterator[dict[str, bytes]]:
    """The JSON lines of `batch` a few thousand rows at a time: {format: bytes} per piece.

    Fields: task, size, format, split, question, chain (list of step strings, empty for
    direct), answer, text (the official sequence in that format).

    Each line is laid out in a fixed-width byte row: constants, and each token as ' tok'
    zero-filled to the widest token; dropping the zero bytes leaves the line. The row
    buffers are allocated once with their constants in place, so a piece only costs the
    token lookups, their copies into the rows and one pass that drops the zeros. Rows are
    rendered a few thousand at a time so the buffers stay in cache, and writers can write
    each piece as it comes instead of joining megabytes first.
    """
    fields = _Fields.of(batch, _byte_table(vocab), with_steps="cot" in formats)
    layouts = {fmt: _Layout.of(task, size, fmt, split, fields) for fmt in formats}
    widest = max(layout.width for layout in layouts.values())
    rows = max(64, min(len(batch), RENDER_BYTES // widest))
    buffers = {fmt: layout.buffer(rows) for fmt, layout in layouts.items()}
    for lo in range(0, len(batch), rows):
        piece = fields.bytes_of(slice(lo, lo + rows))
        yield {fmt: layouts[fmt].render(buffers[fmt], piece) for fmt in formats}


RENDER_BYTES = 1 << 20  # bytes of row buffer per format and piece: about what L2 holds


@dataclass
class _Fields:
    """The token fields of a batch, compacted once; `bytes_of` renders a slice of rows."""

    table: np.ndarray  # [V, W] from `_byte_table`
    question: np.ndarray
    answer: np.ndarray
    steps: list[np.ndarray]  # one [B, L] array per step that some row has
    present: np.ndarray  # [B, steps]: which steps each row has

    @classmethod
    def of(cls, batch: TokenBatch, table: np.ndarray, with_steps: bool) -> _Fields:
        with_steps = with_steps and batch.steps.shape[1] > 0
        rows = len(batch)
        present = batch.step_presence() if with_steps else np.zeros((rows, 0), bool)
        steps = [compact(batch.steps[:, i]) for i in range(present.shape[1])]
        return cls(table, compact(batch.question), compact(batch.answer), steps, present)

    def width(self, ids: np.ndarray) -> int:
        return ids.shape[1] * self.table.shape[1]

    def bytes_of(self, rows: slice) -> dict[str, np.ndarray]:
        """{name: [rows, L*W] bytes of 'tok tok tok'} (zeros are dropped later); names are
        question, answer, step0, step1, ..., and present0, ... (each [rows, 1] 0/1 bytes)."""
        out = {
            "question": self._field(self.question[rows]),
            "answer": self._field(self.answer[rows]),
        }
        for i, step in enumerate(self.steps):
            out[f"step{i}"] = self._field(step[rows])
            out[f"present{i}"] = self.present[rows, i : i + 1].view(np.uint8)
        if self.steps:
            out["any"] = self.present[rows].any(axis=1, keepdims=True).view(np.uint8)
        return out

    def _field(self, ids: np.ndarray) -> np.ndarray:
        # np.take on axis 0 copies whole table rows: several times faster than table[ids]
        chars = np.take(self.table, ids, axis=0).reshape(ids.shape[0], -1)
        chars[:, 0] = 0  # the space in front of the first token (compacted to column 0)
        return chars


@dataclass
class _Layout:
    """Where each constant and field goes in the byte rows of one format's lines.

    constants: (column, bytes), the same in every row; fields: (column, field name, width)
    of the token fields; optional: (column, bytes, presence name) of the separators that
    belong to a step, zeroed in the rows without that step.
    """

    width: int
    constants: list[tuple[int, bytes]]
    fields: list[tuple[int, str, int]]
    optional: list[tuple[int, bytes, str]]

    @classmethod
    def of(cls, task: Task, size: int, fmt: str, split: str, fields: _Fields) -> _Layout:
        layout = cls(0, [], [], [])
        steps = range(len(fields.steps)) if fmt == "cot" else range(0)
        widths = {"question": fields.width(fields.question), "answer": fields.width(fields.answer)}
        widths.update({f"step{i}": fields.width(fields.steps[i]) for i in steps})
        head = f'{{"task": "{task.name}", "size": {size}, "format": "{fmt}", "split": "{split}", '
        layout._const(head + '"question": "')
        layout._field("question", widths)
        layout._const('", "chain": [')
        for i in steps:
            layout._const('"' if i == 0 else ', "', f"present{i}")
            layout._field(f"step{i}", widths)
            layout._const('"', f"present{i}")
        layout._const('], "answer": "')
        layout._field("answer", widths)
        layout._const('", "text": "')
        layout._field("question", widths)
        layout._const(f" {task.format.head}")
        for i in steps:
            layout._const(" ", f"present{i}")
            layout._field(f"step{i}", widths)
            if task.format.after:
                layout._const(f" {task.format.after}", f"present{i}")
        if fmt == "cot" and fields.steps and task.format.tail:
            layout._const(f" {task.format.tail}", "any")
        layout._const(" ")
        layout._field("answer", widths)
        layout._const('"}\n')
        return layout

    def _const(self, text: str, present: str | None = None) -> None:
        raw = text.encode("ascii")
        if present is None:
            self.constants.append((self.width, raw))
        else:
            self.optional.append((self.width, raw, present))
        self.width += len(raw)

    def _field(self, name: str, widths: dict[str, int]) -> None:
        self.fields.append((self.width, name, widths[name]))
        self.width += widths[name]

    def buffer(self, rows: int) -> np.ndarray:
        """[rows, width] bytes with the constants filled in, reused for every piece."""
        buffer = np.zeros((rows, self.width), dtype=np.uint8)
        for column, raw in self.constants:
            buffer[:, column : column + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return buffer

    def render(self, buffer: np.ndarray, piece: dict[str, np.ndarray]) -> bytes:
        rows = len(piece["question"])
        for column, name, width in self.fields:
            buffer[:rows, column : column + width] = piece[name]
        for column, raw, present in self.optional:
            constant = np.frombuffer(raw, dtype=np.uint8)
            buffer[:rows, column : column + len(raw)] = constant * piece[present]
        return buffer[:rows].tobytes().translate(None, b"\0")


def token_lengths(task: Task, batch: TokenBatch, fmt: str) -> np.ndarray:
    """Tokens in each example's text (without end-of-sequence), vectorised."""
    n = tokens_per_row(batch.question) + 1 + tokens_per_row(batch.answer)
    if fmt == "cot" and batch.steps.shape[1] > 0:
        present = batch.step_presence()
        rows, steps, width = batch.steps.shape
        n = n + tokens_per_row(batch.steps.reshape(rows, steps * width))
        if task.format.after:
            n = n + present.sum(axis=1)
        if task.format.tail:
            n = n + present.any(axis=1)
    return n
