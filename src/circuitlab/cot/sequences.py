"""Token sequences for training: question, separator, chain, answer, end-of-sequence.

Built straight from a `TokenBatch` with array operations (no text round trip), so a million
examples become training tensors in seconds. The prompt is the question plus the separator
after it (`=` or `<sep>`): the official setup computes the loss on everything after that
separator through end-of-sequence, and generation starts there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuitlab.cot.tasks.common import PAD_ID, Task, TokenBatch, Vocab, compact

IGNORE = -100  # label value that cross-entropy skips


@dataclass(frozen=True)
class Sequences:
    """ids [N, L] (right-padded with 0), lengths [N] (with end-of-sequence), prompt [N]."""

    ids: np.ndarray
    lengths: np.ndarray
    prompt: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.lengths.max(initial=0))


def build_sequences(task: Task, batch: TokenBatch, vocab: Vocab, fmt: str) -> Sequences:
    """The official text of each example (`task.text`), tokenised, plus `<eos>`."""
    rows = len(batch)
    layout = task.format

    def column(token: str, where: np.ndarray | None = None) -> np.ndarray:
        col = np.full((rows, 1), vocab.id(token), dtype=np.int64)
        if where is not None:
            col[~where] = PAD_ID
        return col

    question = compact(batch.question).astype(np.int64)
    parts = [question, column(layout.head)]
    if fmt == "cot" and batch.steps.shape[1] > 0:
        present = (batch.steps != PAD_ID).any(axis=2)
        for s in range(batch.steps.shape[1]):
            parts.append(batch.steps[:, s].astype(np.int64))
            if layout.after:
                parts.append(column(layout.after, present[:, s]))
        if layout.tail:
            parts.append(column(layout.tail, present.any(axis=1)))
    parts += [batch.answer.astype(np.int64), column("<eos>")]
    ids = compact(np.concatenate(parts, axis=1))
    lengths = (ids != PAD_ID).sum(axis=1)
    prompt = (question != PAD_ID).sum(axis=1) + 1
    return Sequences(ids, lengths, prompt)


def loss_labels(ids: np.ndarray, lengths: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """Next-token labels: only tokens after the prompt (through `<eos>`) count.

    Position t predicts token t + 1; it is labelled when prompt <= t + 1 < length, so the
    question and its separator never contribute to the loss, and neither does padding.
    """
    labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    labels[:, :-1] = ids[:, 1:]
    target_pos = np.arange(ids.shape[1])[None, :] + 1
    keep = (target_pos >= prompt[:, None]) & (target_pos < lengths[:, None])
    labels[~keep] = IGNORE
    return labels
