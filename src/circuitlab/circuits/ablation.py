"""Knocking out single attention heads: zero, mean and resample ablation.

An ablated head's `z` (its output before W_O, see `core.sites`) is replaced by
- zero:     zeros, so the head writes nothing but the layer keeps its bias;
- mean:     its mean over every real token of a reference set of prompts (by default the
            task's negatives), one vector per head broadcast to all positions;
- resample: its value, position by position, on a corrupted prompt paired with the clean one
            (the task's negative of the same pair), as in activation patching. The pair must
            have the same number of tokens; the task generators guarantee that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from circuitlab.circuits.heads import reduced_z
from circuitlab.circuits.hooks import HeadEdit, editing_z, reading_z
from circuitlab.circuits.tokens import Encoded, encode, last_logits, model_device
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM
from circuitlab.core.sites import Sites, find_sites

ABLATIONS = ("mean", "resample", "zero")


def check_kind(kind: str) -> str:
    if kind not in ABLATIONS:
        raise CircuitlabError(f"unknown ablation {kind!r}: use one of {', '.join(ABLATIONS)}")
    return kind


def zero_z(sites: Sites) -> torch.Tensor:
    """Zero-ablation values: [n_layers, n_heads, head_dim]."""
    return torch.zeros(sites.n_layers, sites.n_heads, sites.head_dim)


def mean_z(lm: LoadedLM, reference: Encoded, *, batch_size: int = 32) -> torch.Tensor:
    """Mean-ablation values: each head's `z` averaged over all real tokens of `reference`.

    Returns [n_layers, n_heads, head_dim]. Every token counts once, so long prompts weigh more.
    """
    per_prompt = reduced_z(lm, reference, reduction="mean", batch_size=batch_size)
    weights = reference.lengths.float()
    return torch.einsum("n,nlhk->lhk", weights, per_prompt) / weights.sum()


@torch.inference_mode()
def position_z(lm: LoadedLM, enc: Encoded) -> torch.Tensor:
    """Every head's `z` at every position of one batch: [batch, seq, n_layers, n_heads, head_dim].

    These are the resample-ablation values for the clean batch paired with `enc`.
    """
    model = lm.model
    sites = find_sites(model)
    enc = enc.to(model_device(model))
    store: dict[int, torch.Tensor] = {}
    with reading_z(sites, lambda layer, z: store.__setitem__(layer, z.clone())):
        model(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            logits_to_keep=1,
            use_cache=False,
        )
    return torch.stack([store[layer] for layer in range(sites.n_layers)], dim=2)


def encode_pairs(
    lm: LoadedLM, clean: Sequence[str], corrupted: Sequence[str], *, prepend_bos: bool = False
) -> tuple[Encoded, Encoded]:
    """Encode paired prompts to the same width; refuse pairs whose token counts differ."""
    if len(clean) != len(corrupted):
        raise CircuitlabError(
            f"resample ablation pairs prompts: {len(clean)} clean vs {len(corrupted)} corrupted"
        )
    a = encode(lm.tokenizer, clean, prepend_bos=prepend_bos)
    b = encode(lm.tokenizer, corrupted, prepend_bos=prepend_bos)
    differ = torch.nonzero(a.lengths != b.lengths).flatten()
    if len(differ):
        i = int(differ[0])
        raise CircuitlabError(
            f"{len(differ)} prompt pair(s) differ in token count, so resample ablation cannot "
            f"align positions; first: {clean[i]!r} ({int(a.lengths[i])} tokens) vs "
            f"{corrupted[i]!r} ({int(b.lengths[i])} tokens). Use mean or zero ablation."
        )
    return a, b


def _check_heads(sites: Sites, heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < sites.n_layers and 0 <= head < sites.n_heads):
            raise CircuitlabError(
                f"head {layer}.{head} does not exist: the model has {sites.n_layers} layers of "
                f"{sites.n_heads} heads"
            )
        by_layer.setdefault(layer, []).append(head)
    return by_layer


@contextmanager
def ablate(lm: LoadedLM, heads: Iterable[tuple[int, int]], values: torch.Tensor) -> Iterator[None]:
    """Ablate `heads` ((layer, head) pairs) in every forward pass of `lm.model` inside the block.

    values: [n_layers, n_heads, head_dim] (from `zero_z` or `mean_z`, the same at every
    position and prompt) or [batch, seq, n_layers, n_heads, head_dim] (from `position_z` on
    the corrupted partners of exactly the batch that runs inside the block: resampling).
    """
    sites = find_sites(lm.model)
    by_layer = _check_heads(sites, heads)
    edits = {}
    for layer, hs in by_layer.items():
        mask = torch.zeros(1, sites.n_heads, dtype=torch.bool)
        mask[0, hs] = True
        per_layer = values[layer] if values.dim() == 3 else values[:, :, layer]
        edits[layer] = HeadEdit(mask=mask, values=per_layer)
    with editing_z(sites, edits):
        yield


def ablated_logits(
    lm: LoadedLM,
    prompts: Sequence[str],
    heads: Iterable[tuple[int, int]],
    *,
    kind: str = "mean",
    reference: Sequence[str] | None = None,
    batch_size: int = 32,
    prepend_bos: bool = False,
) -> torch.Tensor:
    """Next-token logits [n_prompts, vocab] with `heads` ablated.

    reference: for mean ablation the prompts to average over; for resample ablation the
    corrupted partner of each prompt (same order, same token count); unused for zero.
    """
    check_kind(kind)
    heads = list(heads)
    sites = find_sites(lm.model)
    if kind != "zero" and reference is None:
        raise CircuitlabError(f"{kind} ablation needs reference prompts (e.g. the negatives)")
    if kind == "resample":
        enc, corrupted = encode_pairs(lm, prompts, reference or (), prepend_bos=prepend_bos)
    else:
        enc = encode(lm.tokenizer, prompts, prepend_bos=prepend_bos)
        corrupted = None
    values = None
    if kind == "zero":
        values = zero_z(sites)
    elif kind == "mean":
        ref = encode(lm.tokenizer, reference or (), prepend_bos=prepend_bos)
        values = mean_z(lm, ref, batch_size=batch_size)
    out = []
    for start in range(0, len(enc), batch_size):
        index = torch.arange(start, min(start + batch_size, len(enc)))
        sub = enc.select(index)
        batch_values = position_z(lm, corrupted.select(index)) if corrupted is not None else values
        assert batch_values is not None
        with ablate(lm, heads, batch_values):
            out.append(last_logits(lm.model, sub).cpu())
    return torch.cat(out)
