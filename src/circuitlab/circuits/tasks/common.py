"""What every circuits task is: paired positive and negative prompts, answer tokens, a metric.

A task is data, not behaviour: a frozen `CircuitTask` holding prompt texts and token ids for one
tokenizer. Pair i is a positive prompt (the model does the task) and its negative (the
corruption that removes the information the task needs). The metric of pair i is computed
from the next-token logits after a prompt with that pair's `good` and `bad` tokens, on the
positive and on the negative alike, so the two numbers are directly comparable and their gap
is what patching a head can destroy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from circuitlab.core.errors import CircuitlabError

METRICS = ("logit_diff", "prob_diff", "logprob")


@dataclass(frozen=True)
class CircuitTask:
    """Paired prompts for one tokenizer.

    metric: logit_diff (largest logit among `good` minus largest among `bad`: IOI, docstring),
            prob_diff (probability mass on `good` minus mass on `bad`: greater-than) or
            logprob (log-probability of the `good` tokens; for user tasks without wrong answers).
    """

    name: str
    metric: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    good: tuple[tuple[int, ...], ...]
    bad: tuple[tuple[int, ...], ...]
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.positives)
        if self.metric not in METRICS:
            raise CircuitlabError(
                f"unknown metric {self.metric!r}: use one of {', '.join(METRICS)}"
            )
        if n == 0:
            raise CircuitlabError(f"task {self.name} has no prompts")
        if not (len(self.negatives) == len(self.good) == len(self.bad) == n):
            raise CircuitlabError(
                f"task {self.name}: {n} positives, {len(self.negatives)} negatives, "
                f"{len(self.good)} answer sets and {len(self.bad)} wrong-answer sets; "
                "every positive needs one of each"
            )
        if self.metric != "prob_diff" and not all(self.good):
            raise CircuitlabError(f"task {self.name}: every prompt needs an answer token")
        if self.metric == "logit_diff" and not all(self.bad):
            raise CircuitlabError(f"task {self.name}: logit difference needs wrong answers")

    def __len__(self) -> int:
        return len(self.positives)

    @property
    def answers(self) -> tuple[int, ...]:
        """The first (for IOI and docstring: the only) correct token of each pair."""
        return tuple(g[0] if g else -1 for g in self.good)

    def head(self, n: int) -> CircuitTask:
        """The first `n` pairs (all of them if there are fewer)."""
        if n < 1:
            raise CircuitlabError(f"need at least one prompt pair, got {n}")
        return CircuitTask(
            name=self.name,
            metric=self.metric,
            positives=self.positives[:n],
            negatives=self.negatives[:n],
            good=self.good[:n],
            bad=self.bad[:n],
            description=self.description,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "pairs": len(self),
            "example_positive": self.positives[0],
            "example_negative": self.negatives[0],
            "description": self.description,
        }


def next_token(tokenizer: Any, context: str, continuation: str) -> int | None:
    """The id of `continuation` when it follows `context` as exactly one token, else None.

    Tokenizing in context (not alone) gets the leading-space form right for byte-level BPE
    and SentencePiece tokenizers alike, and ignores any BOS the tokenizer adds.
    """
    before = tokenizer(context).input_ids
    after = tokenizer(context + continuation).input_ids
    if len(after) != len(before) + 1 or after[: len(before)] != before:
        return None
    return int(after[-1])


def single_tokens(
    tokenizer: Any, words: Iterable[str], *, what: str, context: str = "Hello,", need: int = 1
) -> dict[str, int]:
    """Map each word to its token id when " word" is one token after `context`; warn about the rest.

    Multi-token words are dropped with a warning rather than silently used: a task's answer
    must be one next token, and paired prompts must keep the same length.
    """
    kept: dict[str, int] = {}
    dropped = []
    for word in dict.fromkeys(words):
        token = next_token(tokenizer, context, " " + word)
        if token is None:
            dropped.append(word)
        else:
            kept[word] = token
    if dropped:
        warnings.warn(
            f"{len(dropped)} {what} are not single tokens for this tokenizer and were left out: "
            f"{', '.join(dropped[:12])}{' ...' if len(dropped) > 12 else ''}",
            stacklevel=2,
        )
    if len(kept) < need:
        raise CircuitlabError(
            f"only {len(kept)} {what} are single tokens for this tokenizer; the task needs {need}"
        )
    return kept


def check_pairs(tokenizer: Any, positives: Sequence[str], negatives: Sequence[str]) -> list[int]:
    """Indices of the pairs whose positive and negative have the same number of tokens."""
    return [
        i
        for i, (p, n) in enumerate(zip(positives, negatives, strict=True))
        if len(tokenizer(p).input_ids) == len(tokenizer(n).input_ids)
    ]
