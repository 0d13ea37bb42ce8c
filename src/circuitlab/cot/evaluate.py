"""Greedy generation from the question, scored by the task's own verifier.

The paper's metric is final-answer accuracy: the tokens before `<eos>` equal the answer.
The official code's evaluation differs per task: arithmetic and equations read the answer
of a generation, LIS (and every direct model) asks the whole continuation through `<eos>`
to be right, teacher-forced (ED CoT has no official evaluation; it is scored as LIS);
greedy exact match is the same test (teacher forcing gets every token right exactly when
greedy decoding writes the reference). That is
`sequence_accuracy`, and `official_accuracy` is the metric the official code reports for
the task. Neither says why a chain is wrong, so every CoT generation also goes through the
task's step verifier, which gives chain accuracy (every step valid and the answer right;
it accepts any valid chain, not only the reference's) and the position of the first wrong
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
    exact: bool = False  # the continuation equals the reference's, `<eos>` included


# Tasks whose CoT is scored on the whole continuation: LIS as its official eval.py does;
# ED by analogy (the official code has no ED CoT evaluation: ED/ has no eval.py). The
# others read the generated answer, as arithmetic/ and equation/eval.py do.
SEQUENCE_METRIC_TASKS = ("lis", "ed")


def official_metric(task: str, fmt: str) -> str:
    """`answer` or `sequence`: what the official code reports for this task and format."""
    return "sequence" if fmt == "direct" or task in SEQUENCE_METRIC_TASKS else "answer"


def score(
    task: Task,
    question: str,
    continuation: str,
    reference: str,
    fmt: str,
    p: int,
    exact: bool = False,
) -> Scored:
    """Score the text a model wrote after `question` and its separator.

    `reference` is the true answer and `exact` whether the generation matched the reference
    continuation token for token. For direct models the chain is empty by construction, so
    chain validity is simply answer correctness.
    """
    steps, answer = task.format.split(continuation)
    right = answer == reference
    if fmt == "direct":
        wrong_at = None if right else len(steps)
        return Scored(right, right and not steps, wrong_at, len(steps), exact)
    verdict = task.verify(question, steps, answer, p)
    return Scored(right, verdict.valid and right, verdict.first_error, len(steps), exact)


@dataclass(frozen=True)
class EvalResult:
    examples: int
    answer_accuracy: float
    chain_accuracy: float
    right_answer_wrong_chain: int
    first_error: dict[str, int]  # "step k" / "answer" -> count among invalid chains
    sequence_accuracy: float = 0.0
    official_metric: str = "answer"  # official_metric(task, format)

    @property
    def official_accuracy(self) -> float:
        if self.official_metric == "sequence":
            return self.sequence_accuracy
        return self.answer_accuracy

    def to_dict(self) -> dict[str, object]:
        return {
            "examples": self.examples,
            "answer_accuracy": self.answer_accuracy,
            "chain_accuracy": self.chain_accuracy,
            "sequence_accuracy": self.sequence_accuracy,
            "official_metric": self.official_metric,
            "official_accuracy": self.official_accuracy,
            "right_answer_wrong_chain": self.right_answer_wrong_chain,
            "first_error": self.first_error,
        }


def summarise(scored: list[Scored], metric: str = "answer") -> EvalResult:
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
        sequence_accuracy=sum(s.exact for s in scored) / n,
        official_metric=metric,
    )


def sample_record(
    task: Task, question: str, generated: str, reference: str, scored: Scored
) -> dict[str, object]:
    """One generation as `cot eval --samples` writes it: texts in the data files' token
    format (tokens separated by spaces; `generated` stops before `<eos>`), so another
    checker can re-score it; `first_error` is the step index, len(steps) for the answer."""
    steps, answer = task.format.split(generated)
    return {
        "question": question,
        "generated": generated,
        "steps": list(steps),
        "answer": answer,
        "reference": reference,
        "answer_correct": scored.answer_correct,
        "chain_valid": scored.chain_valid,
        "exact": scored.exact,
        "first_error": scored.first_error,
    }


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
    samples: list[dict[str, object]] | None = None,
    max_new: int | None = None,
) -> EvalResult:
    """Greedy-decode every test question and score it.

    Prompts of equal length are batched together (absolute positions forbid left padding),
    so there is no padding at all in generation. `samples`, when given, receives one
    record per question in test-split order (`sample_record`). `max_new` bounds the
    generation when the test split's references are shorter than a chain can be (the
    official CoT test files hold the answer alone).
    """
    was_training = model.training
    model.eval()
    scored: list[Scored | None] = [None] * len(test)
    records: list[dict[str, object] | None] = [None] * len(test)
    if max_new is None:  # the references' longest continuation, and room for a wrong one
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
                text = vocab.decode(generated)
                ends = np.flatnonzero(generated == EOS_ID)
                want = seq[plen : test.lengths[row]]  # through the reference's <eos>
                exact = bool(len(ends)) and np.array_equal(generated[: ends[0] + 1], want)
                scored[row] = score(task, question, text, ref_answer, fmt, p, exact)
                if samples is not None:
                    records[row] = sample_record(task, question, text, reference, scored[row])
    model.train(was_training)
    if samples is not None:
        samples.extend(r for r in records if r is not None)
    done = [s for s in scored if s is not None]
    return summarise(done, official_metric(task.name, fmt))
