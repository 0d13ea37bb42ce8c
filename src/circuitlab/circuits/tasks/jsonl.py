"""A task a user writes as JSON lines: one prompt pair per line.

    {"prompt": "When Mary and John went to the store, John gave a drink to",
     "answer": " Mary",
     "negative": "When Anna and Paul went to the store, Kate gave a drink to",
     "wrong": [" John"]}

- prompt:   the positive prompt; the model should continue it with `answer`.
- answer:   the correct continuation, exactly as it follows the prompt (mind the leading
            space); it must be one token for the model's tokenizer.
- negative: the corrupted prompt paired with it (for resample ablation: the same number of
            tokens as the prompt).
- wrong:    optional list of wrong continuations (one token each). When every line has it the
            metric is logit(answer) - max logit(wrong); otherwise it is log p(answer).

Lines whose answer or wrong answers are not single tokens are dropped with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from circuitlab.circuits.tasks.common import CircuitTask, next_token
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_jsonl

FIELDS = ("prompt", "answer", "negative")


def load_jsonl_task(path: str | Path, tokenizer: Any, n: int | None = None) -> CircuitTask:
    """Read a user task from `path` (format above); keep the first `n` usable lines."""
    path = Path(path)
    records = read_jsonl(path)
    if not records:
        raise CircuitlabError(f"{path} holds no prompt pairs")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise CircuitlabError(f"{path}:{number} is not a JSON object")
        missing = [f for f in FIELDS if not isinstance(record.get(f), str) or not record.get(f)]
        if missing:
            raise CircuitlabError(
                f"{path}:{number} lacks {', '.join(missing)} (each line needs the strings "
                "prompt, answer and negative, and may have a list `wrong`)"
            )
        wrong = record.get("wrong", [])
        if not isinstance(wrong, list) or not all(isinstance(w, str) and w for w in wrong):
            raise CircuitlabError(f"{path}:{number}: `wrong` must be a list of strings")
    with_wrong = all(record.get("wrong") for record in records)
    positives, negatives, good, bad = [], [], [], []
    dropped = []
    for number, record in enumerate(records, start=1):
        answer = next_token(tokenizer, record["prompt"], record["answer"])
        wrong = [next_token(tokenizer, record["prompt"], w) for w in record.get("wrong", [])]
        if answer is None or (with_wrong and None in wrong):
            dropped.append(number)
            continue
        positives.append(record["prompt"])
        negatives.append(record["negative"])
        good.append((answer,))
        bad.append(tuple(w for w in wrong if w is not None) if with_wrong else ())
        if n is not None and len(positives) >= n:
            break
    if dropped:
        warnings.warn(
            f"{path}: {len(dropped)} line(s) dropped because an answer is not a single next "
            f"token for this tokenizer (lines {', '.join(map(str, dropped[:10]))}"
            f"{' ...' if len(dropped) > 10 else ''})",
            stacklevel=2,
        )
    if not positives:
        raise CircuitlabError(f"{path}: no line has a single-token answer for this tokenizer")
    return CircuitTask(
        name=path.stem,
        metric="logit_diff" if with_wrong else "logprob",
        positives=tuple(positives),
        negatives=tuple(negatives),
        good=tuple(good),
        bad=tuple(bad),
        description=f"user task from {path}",
    )
