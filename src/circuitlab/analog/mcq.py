"""Multiple-choice evaluation in the shape of AMSBench-TQA: accuracy overall and per subfield.

A row is one JSON line: `question`, `options` (a list, or an object keyed by letter, or
AMSBench's letter-prefixed strings "A. ..."), the answer letter in `answer` or
`groundtruth`, and optionally `subfield` (or `level`, AMSBench's difficulty) and `id`.
Every malformed row is an error that names its line and what is wrong with it.

Modes:
- loglik, scoring "option" (default): each option's text is scored as the model's reply to
  the question, by its mean log-probability per token ("sum" to add them up instead);
  the best-scoring option is the choice. Deterministic, one batched forward pass per
  option, and it measures what a small model knows even when it cannot follow an answer
  format.
- loglik, scoring "letter": the question and lettered options in the prompt, the reply
  prefilled with "The correct option is"; the choice is the letter with the highest
  next-token probability. One forward pass per question (MMLU style).
- generate: greedy generation from the lettered prompt; the chosen letter is parsed from the
  reply ("B", "(B)", "answer is B", "<answer>B"...); a reply without one counts as wrong and
  is reported as unparsed.

Accuracy comes with a Wilson 95% interval, which stays inside [0, 1] and is honest at the
small counts of a per-subfield breakdown.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from circuitlab.analog.sft_data import chat_prompt
from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_jsonl

LETTERS = "ABCDEFGHIJ"
MODES = ("loglik", "generate")
SCORINGS = ("option", "letter")
NORMALIZE = ("mean", "sum")
SHIPPED_NAME = "analog_mcq.jsonl"
_PREFIXED = re.compile(r"^\s*\(?([A-J])[\).:]\s*(.*)$", re.S)


def shipped_mcq() -> Path:
    """The small self-written analog probe (60 questions, 6 subfields); not AMSBench."""
    return Path(str(resources.files("circuitlab.analog") / "data" / SHIPPED_NAME))


@dataclass(frozen=True)
class MCQ:
    id: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    subfield: str


@dataclass(frozen=True)
class MCQConfig:
    """How to ask; `limit` evaluates N questions spread evenly over the file (so a grouped
    file keeps every subfield), not just the first N."""

    mode: str = option("loglik", "loglik (score options) or generate (parse a letter).")
    scoring: str = option("option", "loglik: score option text or letter.")
    normalize: str = option("mean", "Option score: mean or sum of token log-probs.")
    batch_size: int = option(16, "Questions per batch.")
    max_new_tokens: int = 24
    system: str | None = None
    limit: int | None = option(None, "Evaluate N questions spread over the file.")

    def __post_init__(self) -> None:
        require(self.mode in MODES, f"mode {self.mode!r}: use loglik or generate")
        require(self.scoring in SCORINGS, f"scoring {self.scoring!r}: use option or letter")
        require(self.normalize in NORMALIZE, f"normalize {self.normalize!r}: use mean or sum")
        require(self.batch_size >= 1, f"batch_size {self.batch_size}: at least 1")
        require(self.max_new_tokens >= 1, f"max_new_tokens {self.max_new_tokens}: at least 1")
        require(self.limit is None or self.limit >= 1, f"limit {self.limit}: at least 1")


_GOLD = re.compile(r"\(?([A-Ja-j])[.)]?")


def parse_row(row: Any, where: str) -> MCQ:
    if not isinstance(row, dict):
        raise CircuitlabError(f"{where}: a question must be a JSON object")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise CircuitlabError(f"{where}: 'question' is missing or empty")
    raw = row.get("options")
    if isinstance(raw, dict):
        keys = [str(k).strip().upper() for k in raw]
        if keys != list(LETTERS[: len(keys)]):
            raise CircuitlabError(f"{where}: option keys must be A, B, C... in order, not {keys}")
        options = list(raw.values())
    elif isinstance(raw, list):
        options = list(raw)
        matches = [_PREFIXED.match(o) if isinstance(o, str) else None for o in options]
        if (
            options
            and all(matches)
            and [m.group(1) for m in matches if m] == list(LETTERS[: len(options)])
        ):
            options = [m.group(2) for m in matches if m]
    else:
        raise CircuitlabError(f"{where}: 'options' must be a list or an object keyed A, B, ...")
    if not 2 <= len(options) <= len(LETTERS):
        raise CircuitlabError(f"{where}: needs 2 to {len(LETTERS)} options, has {len(options)}")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise CircuitlabError(f"{where}: every option must be a non-empty string")
    raw_answer = row.get("answer", row.get("groundtruth"))
    # one letter, as "B", "b", "(B)", "B." or "B)"; a substring test took "" for A, "BC" for B
    gold = _GOLD.fullmatch(raw_answer.strip()) if isinstance(raw_answer, str) else None
    letter = gold.group(1).upper() if gold else ""
    if not letter or letter not in LETTERS[: len(options)]:
        raise CircuitlabError(
            f"{where}: 'answer' must be one letter of {', '.join(LETTERS[: len(options)])}, "
            f"not {raw_answer!r}"
        )
    subfield = row.get("subfield", row.get("level", "all"))
    return MCQ(
        id=str(row.get("id", where.rsplit(":", 1)[-1])),
        question=question.strip(),
        options=tuple(o.strip() for o in options),
        answer=LETTERS.index(letter),
        subfield=str(subfield),
    )


def load_mcq(path: str | Path | None = None) -> list[MCQ]:
    """Questions of a JSONL file (default: the shipped analog probe)."""
    path = Path(path) if path is not None else shipped_mcq()
    if path.is_dir():
        raise CircuitlabError(f"{path} is a directory; give a JSONL file of questions")
    rows = read_jsonl(path)
    if not rows:
        raise CircuitlabError(f"{path} holds no questions")
    return [parse_row(row, f"{path}:{n}") for n, row in enumerate(rows, start=1)]


def lettered(item: MCQ) -> str:
    lines = [item.question, ""]
    lines += [f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options)]
    lines += ["", "Answer with the letter of the correct option."]
    return "\n".join(lines)


def parse_letter(text: str, n_options: int) -> int | None:
    """The option a free-form reply chose, or None."""
    valid = LETTERS[:n_options]
    patterns = (
        rf"<answer>\s*\(?([{valid}])\b",
        rf"answer\s*(?:is|:)?\s*\(?([{valid}])\b",
        rf"option\s*\(?([{valid}])\b",
        rf"^\s*\(?([{valid}])(?:[\).:,]|\s|$)",
        rf"\b([{valid}])[\).]",
    )
    for pattern in patterns:
        match = re.search(pattern, text, re.I | re.M if "answer" in pattern else re.M)
        if match:
            return valid.index(match.group(1).upper())
    return None


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _left_pad(seqs: Sequence[list[int]], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s)
        mask[row, width - len(s) :] = 1
    # explicit positions, so left padding is exact for absolute-position models too
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": position_ids.to(device),
    }


def _cache_name() -> str:
    """transformers 5.x calls the key/value cache `cache`; 4.x called it `past_key_values`."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    return "cache" if "cache" in fields else "past_key_values"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def option_scores(
    lm: Any, items: Sequence[MCQ], config: MCQConfig, on_batch: Callable[[int], None] | None
) -> list[list[float]]:
    """Per item, the (mean or summed) log-probability of each option as the reply.

    The prompt (system + question: most of the tokens) is run once per question and its
    key/value cache shared by the options, which are then scored one option slot at a time
    for a batch of questions: about 3x fewer tokens through the model than scoring four
    full sequences.
    """
    tok, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    pad = tok.pad_token_id
    heads = [_ids(tok, chat_prompt(tok, item.question, config.system)) for item in items]
    tails = [[_ids(tok, o) or [pad] for o in item.options] for item in items]
    scores = [[0.0] * len(item.options) for item in items]
    order = sorted(range(len(items)), key=lambda k: len(heads[k]))
    for start in range(0, len(order), config.batch_size):
        rows = order[start : start + config.batch_size]
        prefix = _left_pad([heads[r] for r in rows], pad, device)
        out = model(**prefix, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts option token 1
        name = _cache_name()
        cache = getattr(out, name)
        next_position = prefix["position_ids"][:, -1:] + 1
        for slot in range(max(len(items[r].options) for r in rows)):
            options = [tails[r][slot] if slot < len(tails[r]) else [pad] for r in rows]
            length = max(len(o) for o in options)
            ids = torch.full((len(rows), length), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for row, o in enumerate(options):
                ids[row, : len(o)] = torch.tensor(o)
                mask[row, : len(o)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(
                input_ids=ids,
                attention_mask=torch.cat([prefix["attention_mask"], mask], dim=1),
                position_ids=next_position + torch.arange(length, device=device),
                use_cache=True,
                **{name: cache},
            ).logits.float()
            cache.crop(-length)  # back to the prompt (negative: drop; any transformers)
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            rest = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) if length > 1 else None
            for row, r in enumerate(rows):
                if slot >= len(items[r].options):
                    continue
                n = len(options[row])
                total = float(first[row, ids[row, 0]])
                if n > 1 and rest is not None:
                    total += float(rest[row, : n - 1].sum())
                scores[r][slot] = total / n if config.normalize == "mean" else total
        if on_batch:
            on_batch(len(rows))
    return scores


@torch.no_grad()
def letter_scores(
    lm: Any, items: Sequence[MCQ], config: MCQConfig, on_batch: Callable[[int], None] | None
) -> list[list[float]]:
    """Per item, the next-token log-probability of each option letter after the prefill."""
    tok, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    variants = {c: {_ids(tok, c)[0], _ids(tok, " " + c)[-1]} for c in LETTERS}
    seqs = [
        _ids(tok, chat_prompt(tok, lettered(item), config.system) + "The correct option is")
        for item in items
    ]
    scores: list[list[float]] = [[] for _ in items]
    order = sorted(range(len(items)), key=lambda k: len(seqs[k]))
    for start in range(0, len(order), config.batch_size):
        rows = order[start : start + config.batch_size]
        batch = _left_pad([seqs[r] for r in rows], tok.pad_token_id, device)
        logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        for row, r in enumerate(rows):
            letters = LETTERS[: len(items[r].options)]
            scores[r] = [max(float(logp[row, t]) for t in variants[c]) for c in letters]
        if on_batch:
            on_batch(len(rows))
    return scores


@torch.no_grad()
def generate_choices(
    lm: Any, items: Sequence[MCQ], config: MCQConfig, on_batch: Callable[[int], None] | None
) -> tuple[list[int | None], list[str]]:
    tok, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    seqs = [_ids(tok, chat_prompt(tok, lettered(item), config.system)) for item in items]
    replies = [""] * len(items)
    order = sorted(range(len(items)), key=lambda k: len(seqs[k]))
    for start in range(0, len(order), config.batch_size):
        rows = order[start : start + config.batch_size]
        batch = _left_pad([seqs[r] for r in rows], tok.pad_token_id, device)
        batch.pop("position_ids")
        out = model.generate(
            **batch,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for r, text in zip(rows, texts, strict=True):
            replies[r] = text
        if on_batch:
            on_batch(len(rows))
    return [parse_letter(t, len(it.options)) for t, it in zip(replies, items, strict=True)], replies


def evaluate_mcq(
    lm: Any,
    items: Sequence[MCQ],
    config: MCQConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Accuracy (with Wilson 95% interval) overall and per subfield, plus every prediction."""
    config = config or MCQConfig()
    items = list(items)
    if config.limit and config.limit < len(items):
        items = [items[i * len(items) // config.limit] for i in range(config.limit)]
    if not items:
        raise CircuitlabError("no questions to evaluate")
    was_training = lm.model.training
    lm.model.eval()
    started = time.perf_counter()
    replies: list[str] | None = None
    scores: list[list[float]] | None = None
    try:
        if config.mode == "generate":
            choices, replies = generate_choices(lm, items, config, on_batch)
        else:
            scorer = option_scores if config.scoring == "option" else letter_scores
            scores = scorer(lm, items, config, on_batch)
            choices = [max(range(len(s)), key=s.__getitem__) for s in scores]
    finally:
        lm.model.train(was_training)
    seconds = time.perf_counter() - started
    predictions = []
    for k, (item, choice) in enumerate(zip(items, choices, strict=True)):
        record: dict[str, Any] = {
            "id": item.id,
            "subfield": item.subfield,
            "answer": LETTERS[item.answer],
            "choice": LETTERS[choice] if choice is not None else None,
            "correct": choice == item.answer,
        }
        level = getattr(item, "level", None)  # AMSBench's difficulty, where the file has one
        if level is not None:  # kept so that `analog compare` can break results down by it
            record["level"] = level
        if scores is not None:
            record["scores"] = [round(s, 4) for s in scores[k]]
        if replies is not None:
            record["reply"] = replies[k]
        predictions.append(record)
    margin = None
    if scores is not None:  # right option's score minus the best wrong one: smoother than 0/1
        gaps = [
            s[item.answer] - max(v for j, v in enumerate(s) if j != item.answer)
            for item, s in zip(items, scores, strict=True)
        ]
        margin = round(sum(gaps) / len(gaps), 4)
    return {
        **accuracy(predictions),
        "mean_margin": margin,
        "mode": config.mode,
        "scoring": config.scoring if config.mode == "loglik" else "parsed letter",
        "unparsed": sum(p["choice"] is None for p in predictions),
        "seconds": round(seconds, 3),
        "questions_per_second": round(len(items) / seconds, 2) if seconds > 0 else None,
        "predictions": predictions,
    }


def accuracy(predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def block(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        right = sum(bool(r["correct"]) for r in rows)
        low, high = wilson(right, len(rows))
        return {
            "n": len(rows),
            "correct": right,
            "accuracy": round(right / len(rows), 4),
            "ci95": [round(low, 4), round(high, 4)],
        }

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        groups[p["subfield"]].append(p)
    return {**block(predictions), "per_subfield": {k: block(v) for k, v in sorted(groups.items())}}
