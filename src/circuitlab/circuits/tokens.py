"""Prompts to right-padded token batches, and the one forward pass everything else builds on.

Right padding keeps every real token at the position it has when the prompt runs alone, so
absolute position embeddings (GPT-2) and rotary ones (Llama) see the same inputs either way,
and causal attention never lets a real token look at the padding that follows it. What the
padding does leak into (the pad positions themselves) is masked out of every reduction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from circuitlab.core.errors import CircuitlabError


@dataclass(frozen=True)
class Encoded:
    """Token ids [n, seq], right-padded, with the mask of real tokens and each prompt's length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def last_index(self) -> torch.Tensor:
        """Position of each prompt's last real token: where its next-token logits come from."""
        return self.lengths - 1

    def select(self, index: torch.Tensor | Sequence[int]) -> Encoded:
        """A sub-batch, trimmed to its own longest prompt."""
        index = torch.as_tensor(index, dtype=torch.long)
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(index) else 0
        return Encoded(
            self.input_ids[index, :width],
            self.attention_mask[index, :width],
            lengths,
        )

    def to(self, device: torch.device | str) -> Encoded:
        return Encoded(
            self.input_ids.to(device), self.attention_mask.to(device), self.lengths.to(device)
        )


def token_ids(tokenizer: Any, text: str, *, prepend_bos: bool = False) -> list[int]:
    ids = list(tokenizer(text).input_ids)
    bos = tokenizer.bos_token_id
    if prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode(tokenizer: Any, texts: Sequence[str], *, prepend_bos: bool = False) -> Encoded:
    """Tokenize `texts` (the tokenizer's own special tokens; BOS first only if asked)."""
    if not texts:
        raise CircuitlabError("no prompts to encode")
    rows = [token_ids(tokenizer, t, prepend_bos=prepend_bos) for t in texts]
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise CircuitlabError(f"prompt {empty[0]} tokenizes to nothing: {texts[empty[0]]!r}")
    return pad(rows, tokenizer.pad_token_id or 0)


def pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> Encoded:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = max(int(lengths.max()), width or 0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return Encoded(ids, mask, lengths)


def batches(enc: Encoded, batch_size: int) -> Iterator[tuple[torch.Tensor, Encoded]]:
    """(indices, sub-batch) pairs covering `enc`, grouped by length so little padding is run."""
    if batch_size < 1:
        raise CircuitlabError(f"batch size must be at least 1, got {batch_size}")
    order = torch.argsort(enc.lengths, stable=True)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield index, enc.select(index)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def last_logits(model: Any, enc: Encoded, **kwargs: Any) -> torch.Tensor:
    """Next-token logits after each prompt's last real token: [n, vocab].

    Only those positions go through the unembedding (`logits_to_keep`), which for a small
    model with a large vocabulary is a good part of the cost of a forward pass.
    """
    enc = enc.to(model_device(model))
    out = model(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        logits_to_keep=enc.last_index[:, None],
        use_cache=False,
        **kwargs,
    )
    return out.logits[:, 0, :].float()
