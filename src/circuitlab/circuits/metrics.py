"""Task metrics from next-token logits, vectorised over prompts.

Each prompt pair has its own sets of good and bad tokens (greater-than: all years above YY),
so the sets are padded into index tensors once and every metric is a gather plus a masked
reduction: no Python loop over prompts in the patching inner loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitlab.circuits.options import MODEL_HELP, TASK_HELP
from circuitlab.circuits.tasks.common import METRICS, CircuitTask
from circuitlab.circuits.tokens import Encoded, batches, encode, last_logits
from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM


@dataclass(frozen=True)
class TokenSets:
    """Padded token sets [n, width] with masks of the real entries."""

    good: torch.Tensor
    good_mask: torch.Tensor
    bad: torch.Tensor
    bad_mask: torch.Tensor

    def select(self, index: torch.Tensor) -> TokenSets:
        return TokenSets(
            self.good[index], self.good_mask[index], self.bad[index], self.bad_mask[index]
        )

    def repeat(self, k: int) -> TokenSets:
        """The sets for k stacked copies of the batch (copy-major), as patching runs them."""
        return TokenSets(
            *(t.repeat(k, 1) for t in (self.good, self.good_mask, self.bad, self.bad_mask))
        )


def _padded(sets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in sets))
    ids = torch.zeros(len(sets), width, dtype=torch.long)
    mask = torch.zeros(len(sets), width, dtype=torch.bool)
    for i, s in enumerate(sets):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def token_sets(task: CircuitTask) -> TokenSets:
    good, good_mask = _padded(task.good)
    bad, bad_mask = _padded(task.bad)
    return TokenSets(good, good_mask, bad, bad_mask)


def metric_values(logits: torch.Tensor, sets: TokenSets, metric: str) -> torch.Tensor:
    """The metric of each row of `logits` [n, vocab] with its token sets: [n]."""
    logits = logits.float()
    dev = logits.device
    good, good_mask = sets.good.to(dev), sets.good_mask.to(dev)
    bad, bad_mask = sets.bad.to(dev), sets.bad_mask.to(dev)
    if metric == "logit_diff":
        g = logits.gather(1, good).masked_fill(~good_mask, -torch.inf).amax(1)
        b = logits.gather(1, bad).masked_fill(~bad_mask, -torch.inf).amax(1)
        return g - b
    if metric == "prob_diff":
        probs = torch.softmax(logits, dim=-1)
        g = (probs.gather(1, good) * good_mask).sum(1)
        b = (probs.gather(1, bad) * bad_mask).sum(1)
        return g - b
    if metric == "logprob":
        logp = torch.log_softmax(logits, dim=-1)
        return logp.gather(1, good).masked_fill(~good_mask, -torch.inf).logsumexp(1)
    raise CircuitlabError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def correct(logits: torch.Tensor, sets: TokenSets) -> torch.Tensor:
    """Whether each row's top token is one of its good tokens: [n] bool."""
    top = logits.argmax(-1, keepdim=True).to(sets.good.device)
    return ((sets.good == top) & sets.good_mask).any(1)


def prompt_logits(
    lm: LoadedLM,
    prompts: Sequence[str] | Encoded,
    *,
    batch_size: int = 32,
    prepend_bos: bool = False,
) -> torch.Tensor:
    """Clean next-token logits of every prompt [n, vocab], in the prompts' order."""
    enc = (
        prompts
        if isinstance(prompts, Encoded)
        else encode(lm.tokenizer, list(prompts), prepend_bos=prepend_bos)
    )
    out: torch.Tensor | None = None
    for index, sub in batches(enc, batch_size):
        logits = last_logits(lm.model, sub).cpu()
        if out is None:
            out = torch.empty(len(enc), logits.shape[1])
        out[index] = logits
    assert out is not None
    return out


@dataclass(frozen=True)
class TaskScore:
    """How well the model does the task: per-prompt metrics on positives and negatives."""

    metric: str
    positives: torch.Tensor
    negatives: torch.Tensor
    accuracy: float  # fraction of positives whose top next token is a good token

    @property
    def gap(self) -> float:
        return float(self.positives.mean() - self.negatives.mean())

    def summary(self) -> dict[str, float]:
        return {
            "positives_mean": float(self.positives.mean()),
            "positives_std": float(self.positives.std()) if len(self.positives) > 1 else 0.0,
            "positives_above_zero": float((self.positives > 0).float().mean()),
            "negatives_mean": float(self.negatives.mean()),
            "negatives_std": float(self.negatives.std()) if len(self.negatives) > 1 else 0.0,
            "gap": self.gap,
            "top1_accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class CheckConfig:
    """`circuits check`: does the model do the task at all, before a circuit is sought."""

    task: str = option("ioi", TASK_HELP)
    model: str = option("embedded", MODEL_HELP)
    num: int = option(250, "Prompt pairs.")
    seed: int = option(0, "Seed of the prompt generator.")
    batch_size: int = option(32, "Prompts per forward pass.")
    prepend_bos: bool = option(False, "Put the tokenizer's BOS token first.")

    def __post_init__(self) -> None:
        require(self.num >= 1, f"num must be at least 1, got {self.num}")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")


def score_task(
    lm: LoadedLM, task: CircuitTask, *, batch_size: int = 32, prepend_bos: bool = False
) -> TaskScore:
    sets = token_sets(task)
    pos = prompt_logits(lm, task.positives, batch_size=batch_size, prepend_bos=prepend_bos)
    neg = prompt_logits(lm, task.negatives, batch_size=batch_size, prepend_bos=prepend_bos)
    return TaskScore(
        metric=task.metric,
        positives=metric_values(pos, sets, task.metric),
        negatives=metric_values(neg, sets, task.metric),
        accuracy=float(correct(pos, sets).float().mean()),
    )
