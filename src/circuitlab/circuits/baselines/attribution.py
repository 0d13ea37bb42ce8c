"""Attribution patching and HISP-style head importance from one forward + backward pass.

For head h of layer l, with z the head's output before W_O at every position of a prompt and
g = d metric / d z on the clean prompt:
    attribution(h) = sum over positions and dims of g * (z_clean - z_corrupted),
the first-order estimate of how much the metric drops when the head's activation is replaced
by the corrupted one (Nanda 2023; Syed et al. 2023). `ablation="resample"` takes z_corrupted
from the paired negative prompt, position by position; "mean" uses each head's mean over the
negatives (what the default patching reference ablates to). Heads rank by |mean over prompts|.
HISP (Michel et al. 2019): importance(h) = mean over prompts of |sum g * z_clean|, the
gradient of the metric with respect to a gate on the head; it needs no corrupted prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitlab.circuits.ablation import encode_pairs, mean_z, position_z
from circuitlab.circuits.metrics import metric_values, token_sets
from circuitlab.circuits.ranking import Ranking, timed
from circuitlab.circuits.tasks import CircuitTask
from circuitlab.circuits.tokens import Encoded, batches, encode, model_device
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM
from circuitlab.core.progress import progress_bar
from circuitlab.core.sites import Hook, Sites, attn_z, find_sites, hooked

ATTRIBUTION_ABLATIONS = ("resample", "mean")


def gradient_scores(
    lm: LoadedLM,
    task: CircuitTask,
    *,
    ablation: str = "resample",
    batch_size: int = 16,
    prepend_bos: bool = False,
    progress: bool = False,
) -> tuple[Ranking, Ranking]:
    """(attribution patching, HISP) rankings over all heads, from one gradient pass per batch."""
    if ablation not in ATTRIBUTION_ABLATIONS:
        raise CircuitlabError(
            f"attribution patching ablation must be one of {', '.join(ATTRIBUTION_ABLATIONS)}, "
            f"got {ablation!r}"
        )
    seconds: dict[str, float] = {}
    with timed(seconds, "gradients"):
        model = lm.model
        sites = find_sites(model)
        if ablation == "resample":
            pos, neg = encode_pairs(lm, task.positives, task.negatives, prepend_bos=prepend_bos)
            mean = None
        else:
            pos = encode(lm.tokenizer, task.positives, prepend_bos=prepend_bos)
            neg = encode(lm.tokenizer, task.negatives, prepend_bos=prepend_bos)
            mean = mean_z(lm, neg, batch_size=batch_size)
        sets = token_sets(task)
        attr = torch.zeros(len(pos), sites.n_layers, sites.n_heads)
        hisp = torch.zeros(len(pos), sites.n_layers, sites.n_heads)
        bar_ctx = progress_bar("attribution patching", len(pos)) if progress else None
        bar = bar_ctx.__enter__() if bar_ctx else None
        try:
            for index, sub in batches(pos, batch_size):
                if mean is None:
                    corrupted = position_z(lm, neg.select(index)).float()  # [B, S, L, H, hd]
                else:
                    corrupted = mean[None, None].expand(len(index), 1, *mean.shape)
                a, h = _batch_scores(lm, sites, sub, sets.select(index), task.metric, corrupted)
                attr[index], hisp[index] = a, h
                if bar is not None:
                    bar.advance(bar.task_ids[0], len(index))
        finally:
            if bar_ctx:
                bar_ctx.__exit__(None, None, None)
    info: dict[str, Any] = {"ablation": ablation, "prompts": len(pos)}
    return (
        Ranking("attribution", attr.mean(0).abs(), dict(seconds), info),
        Ranking("hisp", hisp.abs().mean(0), dict(seconds), {"prompts": len(pos)}),
    )


def _batch_scores(
    lm: LoadedLM, sites: Sites, enc: Encoded, sets: Any, metric: str, corrupted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    model = lm.model
    enc = enc.to(model_device(model))
    zs: dict[int, torch.Tensor] = {}

    def keeper(layer: int) -> Hook:  # the tensor itself, not a copy: gradients are taken at it
        return lambda z: zs.__setitem__(layer, z)

    hooks = {attn_z(layer): keeper(layer) for layer in range(sites.n_layers)}
    with hooked(sites, hooks), torch.enable_grad():
        out = model(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            logits_to_keep=enc.last_index[:, None],
            use_cache=False,
        )
        values = metric_values(out.logits[:, 0, :], sets, metric)
        z_list = [zs[layer] for layer in range(sites.n_layers)]
        grads = torch.autograd.grad(values.sum(), z_list)
    shape = (len(enc), -1, sites.n_heads, sites.head_dim)
    z = torch.stack([t.detach().float().reshape(shape) for t in z_list], dim=2)  # [B,S,L,H,hd]
    g = torch.stack([t.float().reshape(shape) for t in grads], dim=2)
    corrupted = corrupted[:, : z.shape[1]].to(z.device)
    mask = enc.attention_mask[:, :, None, None, None].to(z.dtype)
    attribution = (g * (z - corrupted) * mask).sum((1, 4))
    hisp = (g * z * mask).sum((1, 4))
    return attribution.cpu(), hisp.cpu()
