"""Per-head outputs: what each attention head writes into the residual stream.

Head h of layer l writes `z_h @ W_O[h]` at every position (TransformerLens `hook_result`; the
output projection's bias belongs to no head). The SAE method reads one vector per (prompt,
head): the mean over the prompt's real tokens (the paper's choice) or the last token. Both
reductions are linear, so they are applied to `z` before the multiplication by W_O: the
[batch, seq, n_heads, d_model] tensor of per-position outputs is never built.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from circuitlab.circuits.hooks import reading_z
from circuitlab.circuits.tokens import Encoded, batches, encode, model_device
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM
from circuitlab.core.progress import progress_bar
from circuitlab.core.sites import Sites, find_sites

REDUCTIONS = ("mean", "last")


def reduce_positions(z: torch.Tensor, enc: Encoded, reduction: str) -> torch.Tensor:
    """[batch, seq, ...] -> [batch, ...]: mean over real tokens, or the last real token."""
    if reduction == "mean":
        mask = enc.attention_mask.to(z.device, z.dtype)
        mask = mask.view(*mask.shape, *([1] * (z.dim() - 2)))
        lengths = enc.lengths.to(z.device, z.dtype).view(-1, *([1] * (z.dim() - 2)))
        return (z * mask).sum(1) / lengths
    if reduction == "last":
        return z[torch.arange(z.shape[0], device=z.device), enc.last_index.to(z.device)]
    raise CircuitlabError(f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")


@torch.inference_mode()
def reduced_z(
    lm: LoadedLM,
    enc: Encoded,
    *,
    reduction: str = "mean",
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Every layer's `z`, reduced over positions: [n_prompts, n_layers, n_heads, head_dim]."""
    model = lm.model
    sites = find_sites(model)
    out = torch.empty(len(enc), sites.n_layers, sites.n_heads, sites.head_dim)
    parts = list(batches(enc, batch_size))
    current: dict[int, torch.Tensor] = {}

    with progress_bar("head outputs", len(enc)) if progress else nullcontext() as bar:
        for index, sub in parts:
            sub = sub.to(model_device(model))

            def on_z(layer: int, z: torch.Tensor, sub: Encoded = sub) -> None:
                current[layer] = reduce_positions(z.float(), sub, reduction).cpu()

            with reading_z(sites, on_z):
                model(
                    input_ids=sub.input_ids,
                    attention_mask=sub.attention_mask,
                    logits_to_keep=1,
                    use_cache=False,
                )
            out[index] = torch.stack([current[layer] for layer in range(sites.n_layers)], dim=1)
            if bar is not None:
                bar.advance(bar.task_ids[0], len(index))
    return out


def z_to_outputs(z: torch.Tensor, lm: LoadedLM, sites: Sites | None = None) -> torch.Tensor:
    """[..., n_layers, n_heads, head_dim] z -> [..., n_layers, n_heads, d_model] head outputs."""
    sites = sites or find_sites(lm.model)
    weights = torch.stack(
        [sites.w_o(layer).detach().float().cpu() for layer in range(sites.n_layers)]
    )  # [L, H, hd, d]
    return torch.einsum("...lhk,lhkd->...lhd", z, weights)


def head_outputs(
    lm: LoadedLM,
    prompts: Sequence[str] | Encoded,
    *,
    reduction: str = "mean",
    batch_size: int = 32,
    prepend_bos: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Each head's residual-stream contribution per prompt: [n_prompts, n_layers, n_heads, d_model].

    reduction: "mean" over the prompt's real tokens (paper default; padding never enters the
    mean) or "last" (the last real token). The result is float32 on the CPU.
    """
    if reduction not in REDUCTIONS:
        raise CircuitlabError(
            f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}"
        )
    enc = (
        prompts
        if isinstance(prompts, Encoded)
        else encode(lm.tokenizer, list(prompts), prepend_bos=prepend_bos)
    )
    z = reduced_z(lm, enc, reduction=reduction, batch_size=batch_size, progress=progress)
    return z_to_outputs(z, lm)
