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

Chunked loss (`chunked_ce_kl`): at a 152k vocabulary a [tokens, vocab] float32 tensor is
2.5 GB per 4k tokens, and the unchunked loss keeps several of them (the model's
log-probs, the reference's, and what the KL's backward needs). Given instead what the LM
head is fed, the CE and KL sums are taken over chunks of tokens, each under
torch.utils.checkpoint: only one chunk's [chunk, vocab] tensors exist at a time, in the
forward and again in the backward, which recomputes the chunk's logits (one more head
matmul per chunk, for the model and for a reference given by its head input) instead of
storing them. Every reference kind has a chunkable form: the live reference and the
hidden-state cache as their head input and head (`HeadReference`), the top-k cache as its
rows (`TopKReference`). `bench_nsc_loss_memory.py` measures the peak memory.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits from half-precision ones; float32 and float64 stay as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


@dataclass(frozen=True)
class HeadReference:
    """The reference as what its LM head was fed at the KL positions, and that head.

    `hidden` [n_kl, d], in the row order of the KL positions; `weight` [vocab, d] and
    `bias` the head's (no gradient flows into any of them). `autocast`: whether the
    reference's head runs under the training autocast, as it does inside the live
    reference's forward; the hidden-state cache's frozen head runs outside it.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    autocast: bool = True

    def rows(self, start: int, end: int) -> HeadReference:
        return HeadReference(self.hidden[start:end], self.weight, self.bias, self.autocast)

    @torch.no_grad()
    def logp(self) -> torch.Tensor:
        """Reference log-probs of these rows, [rows, vocab]."""
        keep = nullcontext() if self.autocast else torch.autocast(self.hidden.device.type,
                                                                  enabled=False)  # fmt: skip
        with keep:
            logits = F.linear(self.hidden.to(self.weight.dtype), self.weight, self.bias)
        return torch.log_softmax(upcast(logits), dim=-1)


@dataclass(frozen=True)
class TopKReference:
    """The cached reference: top ids [n_kl, k], their log-probs and the log tail mass [n_kl]."""

    ids: torch.Tensor
    values: torch.Tensor
    tail: torch.Tensor

    def rows(self, start: int, end: int) -> TopKReference:
        return TopKReference(self.ids[start:end], self.values[start:end], self.tail[start:end])


ChunkReference = HeadReference | TopKReference


def chunked_ce_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ce: torch.Tensor,
    kl: torch.Tensor,
    reference: ChunkReference | None,
    direction: str,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, summed KL) of the rows of `hidden` [M, d], the LM head's input, chunk by
    chunk; the same numbers as `ce_sum` and `token_kl(...).sum()` on the full log-probs.

    `targets` [M] the tokens predicted; `ce` and `kl` [M] bool masks of the rows each term
    covers; `reference` holds one row per True in `kl`, in order (None: no KL, returned as
    0). Gradients flow into `hidden`, `weight` and `bias`; no [M, vocab] tensor is made.
    """
    rows = hidden.shape[0]
    # where each chunk's reference rows start: one host transfer for all chunks
    before = torch.cat([kl.new_zeros(1, dtype=torch.long), kl.long().cumsum(0)]).tolist()
    ce_total: torch.Tensor | int = 0
    kl_total: torch.Tensor | int = 0
    # no rows: one empty chunk, so the sums are zeros whose gradient reaches the head
    # (as the unchunked loss's does: DDP waits for a gradient of every parameter)
    for start in range(0, max(rows, 1), chunk_tokens):
        end = min(start + chunk_tokens, rows)
        ref = None
        if reference is not None and before[end] > before[start]:
            ref = reference.rows(before[start], before[end])
        every = before[end] - before[start] == end - start  # all rows of the chunk are KL rows
        chunk_ce, chunk_kl = checkpoint(
            _chunk_sums, hidden[start:end], weight, bias, targets[start:end], ce[start:end],
            kl[start:end], every, ref, direction, use_reentrant=False, preserve_rng_state=False,
        )  # fmt: skip
        ce_total = ce_total + chunk_ce
        kl_total = kl_total + chunk_kl
    assert isinstance(ce_total, torch.Tensor) and isinstance(kl_total, torch.Tensor)
    return ce_total, kl_total


def _chunk_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ce: torch.Tensor,
    kl: torch.Tensor,
    every_kl: bool,
    reference: ChunkReference | None,
    direction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's CE and KL sums; run under checkpoint, so called again in the backward."""
    logp = torch.log_softmax(upcast(F.linear(hidden, weight, bias)), dim=-1)
    # the target's log-prob by gather: no [rows, vocab] copy of the CE rows
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ce_part = -picked[ce].sum()
    if reference is None:
        return ce_part, torch.zeros((), dtype=logp.dtype, device=logp.device)
    kl_logp = logp if every_kl else logp[kl]
    if isinstance(reference, TopKReference):
        ids = reference.ids.to(logp.device).long()
        terms = bucket_kl(
            kl_logp, ids, reference.values.to(logp), reference.tail.to(logp), direction
        )
    else:
        terms = token_kl(kl_logp, reference.logp().to(logp.dtype), direction)
    return ce_part, terms.sum()
