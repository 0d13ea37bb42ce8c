"""Greedy generation from the question, scored by the task's own verifier.

The paper's metric is final-answer accuracy: the tokens before `<eos>` equal the answer.
The official code never checks the chain itself, so a model can score by luck with a wrong
chain. Here every CoT generation also goes through the task's step verifier, which gives
chain accuracy (every step valid and the answer right) and the position of the first wrong
step, the place to look when a model fails.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from circuitlab.cot.model import GPT, greedy_generate
from circuitlab.cot.sequences import Sequences
from circuitlab.cot.tasks.common import EOS_ID, Task, Vocab


@dataclass(frozen=True)
class Scored:
    """One generation: was the answer right, and (CoT) did every step hold up."""

    answer_correct: bool
    chain_valid: bool
    first_error: int | None  # step index (len(steps) = the answer); None when valid
    steps: int


def score(task: Task, question: str, continuation: str, reference: str, fmt: str, p: int) -> Scored:
    """Score the text a model wrote after `question` and its separator.

    `reference` is the true answer. For direct models the chain is empty by construction,
    so chain validity is simply answer correctness.
    """
    steps, answer = task.format.split(continuation)
    right = answer == reference
    if fmt == "direct":
        return Scored(right, right and not steps, None if right else len(steps), len(steps))
    verdict = task.verify(question, steps, answer, p)
    return Scored(right, verdict.valid and right, verdict.first_error, len(steps))


@dataclass(frozen=True)
class EvalResult:
    examples: int
    answer_accuracy: float
    chain_accuracy: float
    right_answer_wrong_chain: int
    first_error: dict[str, int]  # "step k" / "answer" -> count among invalid chains

    def to_dict(self) -> dict[str, object]:
        return {
            "examples": self.examples,
            "answer_accuracy": self.answer_accuracy,
            "chain_accuracy": self.chain_accuracy,
            "right_answer_wrong_chain": self.right_answer_wrong_chain,
            "first_error": self.first_error,
        }


def summarise(scored: list[Scored]) -> EvalResult:
    n = max(len(scored), 1)
    errors: Counter[str] = Counter()
    for s in scored:
        if s.first_error is not None:
            errors["answer" if s.first_error >= s.steps else f"step {s.first_error}"] += 1
    order = sorted(
        errors, key=lambda k: (k == "answer", int(k.split()[-1]) if k != "answer" else 0)
    )
    return EvalResult(
        examples=len(scored),
        answer_accuracy=sum(s.answer_correct for s in scored) / n,
        chain_accuracy=sum(s.chain_valid for s in scored) / n,
        right_answer_wrong_chain=sum(s.answer_correct and not s.chain_valid for s in scored),
        first_error={k: errors[k] for k in order},
    )


@torch.no_grad()
def evaluate_model(
    model: GPT,
    task: Task,
    vocab: Vocab,
    test: Sequences,
    fmt: str,
    p: int,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Greedy-decode every test question and score it.

    Prompts of equal length are batched together (absolute positions forbid left padding),
    so there is no padding at all in generation.
    """
    was_training = model.training
    model.eval()
    scored: list[Scored | None] = [None] * len(test)
    max_new = int((test.lengths - test.prompt).max(initial=1)) + 8
    for plen in np.unique(test.prompt):
        rows = np.flatnonzero(test.prompt == plen)
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            prompts = torch.as_tensor(test.ids[idx, :plen], device=device)
            new = greedy_generate(model, prompts, max_new, EOS_ID).cpu().numpy()
            for row, generated in zip(idx, new, strict=True):
                seq = test.ids[row]
                question = vocab.decode(seq[: plen - 1])
                reference = vocab.decode(seq[plen : test.lengths[row]])
                _, ref_answer = task.format.split(reference)
                scored[row] = score(task, question, vocab.decode(generated), ref_answer, fmt, p)
    model.train(was_training)
    return summarise([s for s in scored if s is not None])
