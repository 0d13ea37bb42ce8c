"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> >32.

Positives: "The {noun} lasted from the year {XX}{YY} to the year {XX}" with years 1200-1999
and YY in 02..98. Negatives: the "01" corruption, "... from the year {XX}01 to the year {XX}",
which keeps the prompt's shape but removes the start year. The metric on both is computed with
the positive's YY: probability mass on continuations greater than YY minus mass on the rest.

Tokenizers differ in what the next token is:
- two-digit tokens (GPT-2): the next token is "YY" itself; good = 'YY+1'..'99',
  bad = '00'..'YY' (the source paper's metric);
- one token per digit (Llama-family, SmolLM2): the next token is Y1, the first digit of YY;
  good = digits > Y1, bad = digits < Y1 (a digit equal to Y1 could go either way and counts
  for neither). This adaptation is coarser than the original: state it with any result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from circuitlab.circuits.tasks.common import CircuitTask, check_pairs, next_token
from circuitlab.core.errors import CircuitlabError

# Event nouns in the style of Hanna et al.'s list (all fit "The ... lasted from ... to ...").
NOUNS = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assault", "assessment",
    "attack", "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration",
    "coma", "competition", "confrontation", "conspiracy", "construction", "consultation",
    "contract", "convention", "cooperation", "custody", "deal", "decline", "demonstration",
    "development", "disagreement", "dispute", "domination", "dynasty", "effort",
    "employment", "engagement", "epidemic", "evaluation", "exchange", "expansion",
    "expedition", "experiment", "famine", "friendship", "growth", "hardship", "hostility",
    "illness", "imprisonment", "investigation", "invasion", "journey", "marriage",
    "negotiation", "occupation", "operation", "outbreak", "pilgrimage", "plague", "project",
    "rebellion", "reign", "relationship", "rivalry", "siege", "strike", "war",
)  # fmt: skip

CENTURIES = tuple(range(12, 20))
TEMPLATE = "The {noun} lasted from the year {xx}{yy} to the year {xx}"


def digit_mode(tokenizer: Any) -> tuple[str, dict[str, int]]:
    """("two", {'00'..'99' -> id}) or ("one", {'0'..'9' -> id}): what follows "year 17"."""
    context = TEMPLATE.format(noun="war", xx=17, yy="32")
    for width, values in (("two", [f"{v:02d}" for v in range(100)]), ("one", list("0123456789"))):
        ids = {v: next_token(tokenizer, context, v) for v in values}
        if all(t is not None for t in ids.values()):
            return width, {k: int(t) for k, t in ids.items() if t is not None}
    raise CircuitlabError(
        "greater-than needs a tokenizer that writes years as two-digit or one-digit tokens; "
        "this one does neither after 'to the year 17'"
    )


def make_greater_than(tokenizer: Any, n: int = 250, seed: int = 0) -> CircuitTask:
    """`n` greater-than pairs for `tokenizer`, seeded."""
    if n < 1:
        raise CircuitlabError(f"need at least one greater-than prompt, got {n}")
    mode, ids = digit_mode(tokenizer)
    rng = np.random.default_rng(seed)
    positives, negatives, good, bad = [], [], [], []
    attempts = 0
    while len(positives) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise CircuitlabError("could not draw greater-than prompts of matching length")
        noun = NOUNS[rng.integers(len(NOUNS))]
        xx = CENTURIES[rng.integers(len(CENTURIES))]
        yy = int(rng.integers(2, 99))
        positive = TEMPLATE.format(noun=noun, xx=xx, yy=f"{yy:02d}")
        negative = TEMPLATE.format(noun=noun, xx=xx, yy="01")
        expected = f"{yy:02d}" if mode == "two" else str(yy // 10)
        if next_token(tokenizer, positive, expected) != ids[expected]:
            continue  # this century is tokenized differently: the answer is not one token
        if not check_pairs(tokenizer, [positive], [negative]):
            continue
        if mode == "two":
            up = tuple(ids[f"{v:02d}"] for v in range(yy + 1, 100))
            down = tuple(ids[f"{v:02d}"] for v in range(yy + 1))
        else:
            first = yy // 10
            up = tuple(ids[str(d)] for d in range(first + 1, 10))
            down = tuple(ids[str(d)] for d in range(first))
        positives.append(positive)
        negatives.append(negative)
        good.append(up)
        bad.append(down)
    adaptation = (
        "mass on years > YY minus mass on years <= YY"
        if mode == "two"
        else "digit-by-digit tokenizer: mass on first digits > Y1 minus mass on digits < Y1"
    )
    return CircuitTask(
        name="greater-than",
        metric="prob_diff",
        positives=tuple(positives),
        negatives=tuple(negatives),
        good=tuple(good),
        bad=tuple(bad),
        description=f"greater-than (Hanna et al. 2023), {adaptation}; negatives are '01' years",
    )
