"""The NSC-SFT objective: cross-entropy on the answer plus lambda times a per-token KL.

Neighborhood self-constrained SFT (AnalogSeeker, Chen et al. 2025, arXiv 2508.10409) keeps
the fine-tuned model in a neighbourhood of the original instruct model by penalising how
far its next-token distributions move from the original's on the training inputs:

    L(theta) = CE(theta) + lambda * KL

    CE = mean over supervised (answer) tokens t of  -log p_theta(y_t | x, y_<t)
    KL = mean over the same tokens t of  KL( p_theta(. | x, y_<t) || p_0(. | x, y_<t) )

with p_0 the frozen original model on the very same inputs, the KL taken over the full
vocabulary at every position, only theta updated, and lambda = 0.1 in the paper. Where this
form comes from: the paper's abstract and the summaries of it say "constraining the
perturbation magnitude between the model's output distributions before and after
training" with a dual-model setup in which only the target model is tuned; the direction
KL(current || initial), the per-token full-vocabulary form, the response tokens and
lambda = 0.1 are from a secondary summary (emergentmind's NSC-SFT topic page, citing Chen
et al.); the paper's own equation was not reachable from here. So the direction and the
tokens are settings: `direction` "model||reference" (the summary's form; mode-seeking:
the model may drop reference modes but is punished for mass where the reference has none)
or "reference||model" (mass-covering), and `tokens` "response" (the summary's form) or
"all" (every real token, prompt included). lambda = 0 is plain SFT: the reference is then
never evaluated and the loss is the cross-entropy term alone, bit for bit.

Cached reference: storing p_0 over a 150k vocabulary for every training token is out of
the question, so the reference is cached as its top-k log-probabilities plus the log of the
remaining ("tail") mass. The KL is then taken between the two distributions coarsened to
k + 1 outcomes (the k reference tokens and "anything else"). By the data-processing
inequality this is a lower bound on the full KL that is exact when the tail is empty and
close when the reference is peaked, which instruct models mostly are; `bench_nsc_sft.py`
measures the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from circuitlab.analog.sft_data import IGNORE

DIRECTIONS = ("model||reference", "reference||model")
KL_TOKENS = ("response", "all")


@dataclass(frozen=True)
class Positions:
    """Where to compute logits and which of them count, for one right-padded batch.

    `keep` indexes sequence positions t (logits at t predict token t + 1) that any row
    needs; `ce` and `kl` are [batch, len(keep)] masks; `targets` the tokens predicted there.
    """

    keep: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    targets: torch.Tensor


def positions(labels: torch.Tensor, attention_mask: torch.Tensor, kl_tokens: str) -> Positions:
    """Shifted label and KL masks, restricted to the positions any row needs.

    Passing `keep` as `logits_to_keep` lets the model skip the output projection (the most
    expensive layer of a small LM with a large vocabulary) on prompt-only positions.
    """
    next_labels = labels[:, 1:]
    ce = next_labels != IGNORE
    kl = ce if kl_tokens == "response" else attention_mask[:, 1:].bool()
    wanted = (ce | kl).any(dim=0)
    keep = torch.nonzero(wanted, as_tuple=False).squeeze(1)
    targets = next_labels[:, keep].clamp_min(0)
    ce_kept = ce[:, keep]
    # the same tensor when KL and CE cover the same tokens: callers reuse the CE rows then
    kl_kept = ce_kept if kl is ce else kl[:, keep]
    return Positions(keep=keep, ce=ce_kept, kl=kl_kept, targets=targets)


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, direction: str) -> torch.Tensor:
    """KL per position over the full vocabulary; both inputs are log-probabilities [N, V].

    Differentiable in `logp` only (the reference is a constant). Written as one autograd
    function because at a 49k-150k vocabulary the [N, V] temporaries that autograd would
    keep and combine for `exp * (a - b)` cost a good share of what the live reference
    adds to a step; here the forward makes two and the backward one.
    """
    if direction == "model||reference":
        return _KLModelToReference.apply(logp, ref_logp)
    return _KLReferenceToModel.apply(logp, ref_logp)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) without an [N, V] product."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


class _KLModelToReference(torch.autograd.Function):
    """KL(p || q) = sum_v p_v (a_v - b_v), a = log p, b = log q; d/da_v = p_v (a_v - b_v + 1)."""

    @staticmethod
    def forward(ctx: Any, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        p, diff = logp.exp(), logp - ref_logp
        ctx.save_for_backward(p, diff)
        return _rowdot(p, diff)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        p, diff = ctx.saved_tensors
        return (diff + 1.0).mul_(p).mul_(grad.unsqueeze(-1)), None


class _KLReferenceToModel(torch.autograd.Function):
    """KL(q || p) = sum_v q_v (b_v - a_v);  d/da_v = -q_v."""

    @staticmethod
    def forward(ctx: Any, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        q = ref_logp.exp()
        ctx.save_for_backward(q)
        return _rowdot(q, ref_logp - logp)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (q,) = ctx.saved_tensors
        return q * -grad.unsqueeze(-1), None


def tail_logmass(logp: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """log of the probability outside the token ids `top` [N, k], computed exactly."""
    rest = logp.scatter(-1, top, float("-inf"))
    return torch.logsumexp(rest, dim=-1)


def bucket_kl(
    logp: torch.Tensor,
    top: torch.Tensor,
    ref_top_logp: torch.Tensor,
    ref_tail: torch.Tensor,
    direction: str,
) -> torch.Tensor:
    """KL per position between both distributions coarsened to the reference's top-k + tail.

    `logp` [N, V] the model's log-probabilities; `top` [N, k] the reference's top token ids,
    `ref_top_logp` [N, k] their reference log-probabilities, `ref_tail` [N] the log of the
    reference's remaining mass.
    """
    model_top = logp.gather(-1, top)
    model = torch.cat([model_top, tail_logmass(logp, top).unsqueeze(-1)], dim=-1)
    ref = torch.cat([ref_top_logp, ref_tail.unsqueeze(-1)], dim=-1)
    # exp(-inf) * (-inf - x) would be nan; a bucket without mass contributes nothing.
    if direction == "model||reference":
        terms = model.exp() * (model - ref)
        terms = torch.where(torch.isfinite(model), terms, torch.zeros_like(terms))
    else:
        terms = ref.exp() * (ref - model)
        terms = torch.where(torch.isfinite(ref), terms, torch.zeros_like(terms))
    return terms.sum(-1)


def top_k_reference(logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top ids, their log-probabilities, log tail mass) of reference log-probs [N, V]."""
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids, values, tail_logmass(logp, ids)


def ce_sum(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy; nll_loss of log_softmax is what F.cross_entropy computes."""
    return F.nll_loss(logp, targets, reduction="sum")
