"""Multiple-choice evaluation in the shape of AMSBench-TQA: accuracy overall and per subfield.

A file is a JSON array of questions (AMSBench's own files) or JSON lines, one question
each: `question`, `options`, the answer letter in `answer` or `groundtruth` ("A", "(A)",
"A." and "a" all mean A), and optionally `subfield`, `level` (AMSBench's difficulty; the
subfield when there is none) and `id`. Options come as a list, an object keyed A, B, ...,
AMSBench's letter-prefixed strings ["A. ...", "B. ..."], or one string that letters them
("A. 10 Ω B. 20 Ω" or "(A) 10 Ω (B) 20 Ω"). Every malformed row is an error that names the
file, the row (JSONL: its line) and what is wrong with it.

Over 500 lines: the reader, the prompts and parsers of both protocols, and the scoring of
both backends (in-process and a server) share MCQ and MCQConfig here; splitting the reader
and the reply parsers into modules of their own is the next step.

Modes:
- loglik, scoring "option" (default): each option's text is scored as the model's reply to
  the question, by its mean log-probability per token ("sum" to add them up instead);
  the best-scoring option is the choice. Deterministic, one batched forward pass per
  option, and it measures what a small model knows even when it cannot follow an answer
  format.
- loglik, scoring "letter": the question and lettered options in the prompt, the reply
  prefilled with "The correct option is"; the choice is the letter with the highest
  next-token probability. One forward pass per question (MMLU style).
- generate, protocol "plain": greedy generation (24 new tokens by default) from the
  lettered prompt; the letter is read from the reply by `parse_letter`.
- generate, protocol "amsbench" (`--protocol amsbench` alone selects generate): AMSBench's
  prompt and answer format, sampled at temperature 0.1; see amsbench_prompt.
A reply the parser cannot read counts as wrong; the result counts them and lists their ids.
The generative modes also run on a server (evaluate_mcq_remote: any llm backend), asked the
same messages with the same settings and read by the same parser.

Accuracy comes with a Wilson 95% interval, which stays inside [0, 1] and is honest at the
small counts of a per-subfield breakdown.
"""

from __future__ import annotations

import json
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

from circuitlab.analog.llm.base import Backend, ChatRequest, ChatResult
from circuitlab.analog.sft_data import chat_prompt
from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_jsonl, read_user_text

LETTERS = "ABCDEFGHIJ"
MODES = ("loglik", "generate")
SCORINGS = ("option", "letter")
NORMALIZE = ("mean", "sum")
PROTOCOLS = ("plain", "amsbench")
PARSERS = ("strict", "last-word")
SHIPPED_NAME = "analog_mcq.jsonl"
_PREFIXED = re.compile(r"^\s*\(?([A-J])[\).:]\s*(.*)$", re.S)

# AMSBench's published prompt and settings: see amsbench_prompt
AMSBENCH_SYSTEM = "Please answer according to the images, questions, and options provided."
AMSBENCH_FORMAT = ".The final response format as\u201c**<correct option letter>**\u201d"
# per protocol: (max_new_tokens, temperature) when not given
_GENERATE_DEFAULTS = {"plain": (24, 0.0), "amsbench": (2048, 0.1)}


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
    level: str | None = None
    # the question and options as the file gives them, for a prompt that must match a
    # benchmark's own (amsbench): the options' one string as is, otherwise "A. ..." lines
    source_question: str = ""
    source_options: str = ""


@dataclass(frozen=True)
class MCQConfig:
    """How to ask; `limit` evaluates N questions spread evenly over the file (so a grouped
    file keeps every subfield), not just the first N. Generation settings left unset take
    the protocol's defaults (the properties below), so `--protocol amsbench` alone is the
    whole AMSBench protocol."""

    mode: str | None = option(
        None,
        "loglik (score options) or generate (parse a letter) "
        "\\[default: generate with --protocol amsbench, else loglik].",
    )
    scoring: str = option("option", "loglik: score option text or letter.")
    normalize: str = option("mean", "Option score: mean or sum of token log-probs.")
    protocol: str = option(
        "plain",
        "generate: plain (lettered question, greedy) or amsbench (AMSBench's prompt and "
        "**X** answer format, sampled; selects generate).",
    )
    parser: str = option(
        "strict",
        "generate: read the letter strictly (after </think>, last match, capitals) or by "
        "last-word (AMSBench's script: first letter of the reply's last word).",
    )
    temperature: float | None = option(
        None, "generate: sampling temperature, 0 greedy \\[default: 0.1 amsbench, 0 plain]."
    )
    max_new_tokens: int | None = option(
        None, "generate: tokens per reply \\[default: 2048 amsbench, 24 plain]."
    )
    seed: int = option(0, "generate: seed for sampling.")
    batch_size: int = option(16, "Questions per batch.")
    system: str | None = None
    limit: int | None = option(None, "Evaluate N questions spread over the file.")

    def __post_init__(self) -> None:
        require(self.mode in (None, *MODES), f"mode {self.mode!r}: use loglik or generate")
        require(self.scoring in SCORINGS, f"scoring {self.scoring!r}: use option or letter")
        require(self.normalize in NORMALIZE, f"normalize {self.normalize!r}: use mean or sum")
        require(
            self.protocol in PROTOCOLS,
            f"protocol {self.protocol!r}: use {' or '.join(PROTOCOLS)}",
        )
        require(
            not (self.protocol == "amsbench" and self.mode == "loglik"),
            "protocol amsbench generates its answers: drop mode loglik",
        )
        require(self.parser in PARSERS, f"parser {self.parser!r}: use {' or '.join(PARSERS)}")
        require(
            self.temperature is None or 0 <= self.temperature < math.inf,
            f"temperature {self.temperature}: 0 (greedy) or more",
        )
        require(self.batch_size >= 1, f"batch_size {self.batch_size}: at least 1")
        require(
            self.max_new_tokens is None or self.max_new_tokens >= 1,
            f"max_new_tokens {self.max_new_tokens}: at least 1",
        )
        require(self.limit is None or self.limit >= 1, f"limit {self.limit}: at least 1")

    @property
    def generates(self) -> bool:
        return self.mode == "generate" or (self.mode is None and self.protocol == "amsbench")

    @property
    def new_tokens(self) -> int:
        given = self.max_new_tokens
        return given if given is not None else _GENERATE_DEFAULTS[self.protocol][0]

    @property
    def sampling_temperature(self) -> float:
        given = self.temperature
        return given if given is not None else _GENERATE_DEFAULTS[self.protocol][1]

    def describe(self) -> str:
        """How the answers were obtained, for a results table's title."""
        if not self.generates:
            return f"loglik ({self.scoring} scoring, {self.normalize})"
        t = self.sampling_temperature
        how = f"temperature {t:g}, seed {self.seed}" if t > 0 else "greedy"
        return (
            f"generate: {self.protocol} prompt, {self.parser} letter parser, {how}, "
            f"up to {self.new_tokens} new tokens"
        )


_GOLD = re.compile(r"\(?([A-Ja-j])[.)]?")


def _marker(letter: str) -> re.Pattern[str]:
    """Where option `letter` starts inside one options string: "B." "B)" "B:" or "(B)"
    after a space (or at the start), so a B inside a word is not taken for it."""
    return re.compile(rf"(?<!\S)(?:\({letter}\)|{letter}[.):])")


_MARKERS = {letter: _marker(letter) for letter in LETTERS}


def split_lettered(text: str) -> list[str] | None:
    """One string of lettered options, split on A, B, C... in sequence (each letter's first
    marker after the previous one); None unless it starts with A's marker and has a B."""
    first = _MARKERS["A"].match(text, len(text) - len(text.lstrip()))
    if first is None:
        return None
    bounds = [first]
    for letter in LETTERS[1:]:
        found = _MARKERS[letter].search(text, bounds[-1].end())
        if found is None:
            break
        bounds.append(found)
    if len(bounds) < 2:
        return None
    ends = [b.start() for b in bounds[1:]] + [len(text)]
    return [
        text[b.end() : e].strip().rstrip(",;").strip() for b, e in zip(bounds, ends, strict=True)
    ]


def _options(raw: Any, where: str) -> tuple[list[Any], str]:
    """The options of a row and their text as a benchmark prompt shows them."""
    if isinstance(raw, str):
        split = split_lettered(raw)
        if split is None:
            raise CircuitlabError(
                f"{where}: 'options' is one string but not lettered in sequence "
                'like "A. ... B. ..." or "(A) ... (B) ..."'
            )
        return split, raw
    if isinstance(raw, dict):
        keys = [str(k).strip().upper() for k in raw]
        if keys != list(LETTERS[: len(keys)]):
            raise CircuitlabError(f"{where}: option keys must be A, B, C... in order, not {keys}")
        return list(raw.values()), ""
    if isinstance(raw, list):
        options = list(raw)
        matches = [_PREFIXED.match(o) if isinstance(o, str) else None for o in options]
        if (
            options
            and all(matches)
            and [m.group(1) for m in matches if m] == list(LETTERS[: len(options)])
        ):
            return [m.group(2) for m in matches if m], "\n" + "\n".join(options)
        return options, ""
    raise CircuitlabError(
        f"{where}: 'options' must be a list, an object keyed A, B, ... or one lettered string"
    )


def parse_row(row: Any, where: str, default_id: str | None = None) -> MCQ:
    if not isinstance(row, dict):
        raise CircuitlabError(f"{where}: a question must be a JSON object")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise CircuitlabError(f"{where}: 'question' is missing or empty")
    options, shown = _options(row.get("options"), where)
    if not 2 <= len(options) <= len(LETTERS):
        raise CircuitlabError(f"{where}: needs 2 to {len(LETTERS)} options, has {len(options)}")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise CircuitlabError(f"{where}: every option must be a non-empty string")
    raw_answer = row.get("answer", row.get("groundtruth"))
    # one letter, as "B", "b", "(B)", "B." or "B)"; a substring test took "" for A, "BC" for B
    gold = _GOLD.fullmatch(raw_answer.strip()) if isinstance(raw_answer, str) else None
    letter = gold.group(1).upper() if gold else ""
    if not letter or letter not in LETTERS[: len(options)]:
        key = "answer" if "answer" in row else "groundtruth" if "groundtruth" in row else "answer"
        raise CircuitlabError(
            f"{where}: '{key}' must be one letter of {', '.join(LETTERS[: len(options)])}, "
            f"not {raw_answer!r}"
        )
    level = row.get("level")
    stripped = tuple(o.strip() for o in options)
    if not shown:
        shown = "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(stripped))
    return MCQ(
        id=str(row.get("id", where.rsplit(":", 1)[-1] if default_id is None else default_id)),
        question=question.strip(),
        options=stripped,
        answer=LETTERS.index(letter),
        subfield=str(row.get("subfield", "all" if level is None else level)),
        level=None if level is None else str(level),
        source_question=question,
        source_options=shown,
    )


def load_mcq(path: str | Path | None = None) -> list[MCQ]:
    """Questions of a JSON array or JSONL file (default: the shipped analog probe)."""
    path = Path(path) if path is not None else shipped_mcq()
    if path.is_dir():
        raise CircuitlabError(f"{path} is a directory; give a JSON or JSONL file of questions")
    body = read_user_text(path).lstrip("\ufeff \t\r\n")
    if body.startswith("["):  # a JSON array (AMSBench's files); a JSONL row is an object
        try:
            rows = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as e:
            raise CircuitlabError(f"{path} is not a valid JSON array: {e}") from None
        if not rows:
            raise CircuitlabError(f"{path} holds no questions")
        return [parse_row(r, f"{path} row {n}", str(n)) for n, r in enumerate(rows, start=1)]
    lines = read_jsonl(path)
    if not lines:
        raise CircuitlabError(f"{path} holds no questions")
    return [parse_row(r, f"{path}:{n}", str(n)) for n, r in enumerate(lines, start=1)]


def lettered(item: MCQ) -> str:
    lines = [item.question, ""]
    lines += [f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options)]
    lines += ["", "Answer with the letter of the correct option."]
    return "\n".join(lines)


def amsbench_prompt(item: MCQ) -> str:
    """The user text of the amsbench protocol.

    AMSBench's official script for its text questions (TQA) is not published, so it is not
    available here. Its repository (Why0912/AMSBench) publishes `test models.py`, its image-
    question script: system message AMSBENCH_SYSTEM, user text f"{question}{options}" then
    AMSBENCH_FORMAT (question and options run together, curly quotes included),
    temperature 0.1, no token limit, and the answer read as the first letter of the reply's
    last word. The protocol here sends that prompt without an image. Where it differs:
    options not given as one string are written as "A. ..." lines (the script would print a
    Python list), the token limit is --max-new-tokens (2048 by default), sampling uses the
    temperature alone (no top-k/top-p) seeded by --seed, and the letter is read by
    `parse_letter` unless --parser last-word asks for the script's rule (`parse_last_word`).
    """
    question = item.source_question or item.question
    options = item.source_options or "".join(f"\n{LETTERS[i]}. {o}" for i, o in
                                             enumerate(item.options))  # fmt: skip
    return f"{question}{options}{AMSBENCH_FORMAT}"


def _letter_patterns(valid: str) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    """The answer formats a prompt asks for, then the ways a reply otherwise names a letter.
    Letters are capitals only: "a"/"I" in prose are words, not answers."""
    v = f"[{valid}]"
    asked = [
        # **C**, **(C)**, **C.**, **C. 20 Ω**, **Answer: C** (AMSBench asks for **X**)
        rf"\*\*[^\S\n]*(?:(?i:(?:the\s+)?(?:final\s+)?(?:correct\s+)?(?:answer|option|choice)"
        rf"(?:\s+is)?)[^\S\n]*[:\-]?[^\S\n]*)?\(?({v})\)?(?:[.):][^*\n]*)?\*\*",
        rf"<answer>\s*(?:\*\*)?\(?({v})\b",
        rf"\\boxed\{{\s*(?:\\text(?:bf)?\{{)?\s*\(?({v})\b",
    ]
    named = [
        # "Answer: C", "the correct option is D", "Final: B", "answer would be (B)"
        rf"(?i:\b(?:answer|option|choice|final)\b(?:\s+(?:is|would\s+be|should\s+be|must\s+be)"
        rf"\b)?)\s*[:\-,]?\s*\*{{0,2}}\(?({v})\b(?![\w'\u2019])",
        rf"\(({v})\)",  # (C) anywhere
        rf"(?m)^[^\S\n]*\(?({v})(?:[.):]|[^\S\n]*$)",  # a line that opens "C." "C)" or is "C"
        rf"(?<![\w(])({v})\)",  # C) mid-line
        rf"(?<![\w*(\\.'\u2019-])({v})\.?[^\S\n]*\Z",  # the reply's last word, "... so C."
    ]
    return [re.compile(p) for p in asked], [re.compile(p) for p in named]


def parse_letter(text: str, n_options: int) -> int | None:
    """The option a free-form reply chose, or None when nothing names one.

    Only the text after the last `</think>` counts (a reasoning model weighs every option
    before it answers; an unclosed `<think>` never answered). Within it, the last match
    of the formats a prompt asks for (**C**, <answer>C, \\boxed{C}) wins; failing those,
    the last letter named any other way ("Answer: C", "option is D", "(C)", a line "C."),
    so that "To answer ... (C)" is C and a reply that reconsiders keeps its last word.
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return None
    valid = LETTERS[:n_options]
    for patterns in _letter_patterns(valid):
        found = [(m.start(1), m.group(1)) for p in patterns for m in p.finditer(text)]
        if found:
            return valid.index(max(found)[1])
    return None


def parse_last_word(text: str, n_options: int) -> int | None:
    """AMSBench's published rule: the first letter of the reply's last word, upper-cased
    ("... is **c**." gives C; a reply ending in "because..." gives B). None when that is no
    option's letter (AMSBench's script would count it wrong all the same)."""
    words = text.split()
    letter = (
        next((c.upper() for c in words[-1] if c.isascii() and c.isalpha()), "") if words else ""
    )
    valid = LETTERS[:n_options]
    return valid.index(letter) if letter and letter in valid else None


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
    """The chosen option (None: unparsable) and the reply for each item, generated under
    the config's protocol; sampling is seeded once, so a rerun on the same batches repeats."""
    tok, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    texts = [chat_prompt(tok, user, system) for system, user in
             (generation_messages(item, config) for item in items)]  # fmt: skip
    seqs = [_ids(tok, t) for t in texts]
    temperature = config.sampling_temperature
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:  # temperature alone, as an API call with only `temperature` samples
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        torch.manual_seed(config.seed)
    replies = [""] * len(items)
    order = sorted(range(len(items)), key=lambda k: len(seqs[k]))
    for start in range(0, len(order), config.batch_size):
        rows = order[start : start + config.batch_size]
        batch = _left_pad([seqs[r] for r in rows], tok.pad_token_id, device)
        batch.pop("position_ids")
        out = model.generate(
            **batch,
            max_new_tokens=config.new_tokens,
            pad_token_id=tok.pad_token_id,
            **sampling,
        )
        decoded = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for r, text in zip(rows, decoded, strict=True):
            replies[r] = text
        if on_batch:
            on_batch(len(rows))
    read = letter_reader(config)
    return [read(t, len(it.options)) for t, it in zip(replies, items, strict=True)], replies


def generation_messages(item: MCQ, config: MCQConfig) -> tuple[str | None, str]:
    """(system, user) of a generated answer: one place, so that the in-process model and a
    server (evaluate_mcq_remote) are asked exactly the same thing. No system: none sent."""
    if config.protocol == "amsbench":
        system = config.system if config.system is not None else AMSBENCH_SYSTEM
        return system, amsbench_prompt(item)
    return config.system, lettered(item)


def letter_reader(config: MCQConfig) -> Callable[[str, int], int | None]:
    return parse_letter if config.parser == "strict" else parse_last_word


def generation_requests(items: Sequence[MCQ], config: MCQConfig) -> list[ChatRequest]:
    """One chat request per item, with the protocol's sampling settings as request options."""
    requests = []
    for item in items:
        system, user = generation_messages(item, config)
        chat = ((("system", system),) if system else ()) + (("user", user),)
        requests.append(
            ChatRequest(
                messages=chat,
                max_tokens=config.new_tokens,
                temperature=config.sampling_temperature,
                seed=config.seed,
            )
        )
    return requests


def evaluate_mcq(
    lm: Any,
    items: Sequence[MCQ],
    config: MCQConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Accuracy (with Wilson 95% interval) overall and per subfield, plus every prediction."""
    config = config or MCQConfig()
    items = select_items(items, config)
    was_training = lm.model.training
    lm.model.eval()
    started = time.perf_counter()
    replies: list[str] | None = None
    scores: list[list[float]] | None = None
    try:
        if config.generates:
            choices, replies = generate_choices(lm, items, config, on_batch)
        else:
            scorer = option_scores if config.scoring == "option" else letter_scores
            scores = scorer(lm, items, config, on_batch)
            choices = [max(range(len(s)), key=s.__getitem__) for s in scores]
    finally:
        lm.model.train(was_training)
    seconds = time.perf_counter() - started
    return summarize(items, config, choices, seconds, replies=replies, scores=scores)


def select_items(items: Sequence[MCQ], config: MCQConfig) -> list[MCQ]:
    """The questions `limit` asks for, spread evenly over the file."""
    items = list(items)
    if config.limit and config.limit < len(items):
        items = [items[i * len(items) // config.limit] for i in range(config.limit)]
    if not items:
        raise CircuitlabError("no questions to evaluate")
    return items


def evaluate_mcq_remote(
    backend: Backend,
    items: Sequence[MCQ],
    config: MCQConfig,
    on_batch: Callable[[int], None] | None = None,
    chunk: int = 16,
) -> dict[str, Any]:
    """evaluate_mcq with the replies generated by a backend (an OpenAI-compatible server):
    the same messages, sampling settings and letter parser as the in-process path, `chunk`
    requests handed over at a time (the backend keeps its own number in flight).

    A request that failed after the backend's retries is no answer of the model's, so it is
    not scored as a wrong one: the evaluation stops with an error once every request has
    been tried (a cache keeps the replies received, and a rerun asks only for the rest).
    """
    require(config.generates, "the openai backend generates its answers: use --backend hf "
            "for loglik scoring, or --mode generate / --protocol amsbench")  # fmt: skip
    items = select_items(items, config)
    requests = generation_requests(items, config)
    started = time.perf_counter()
    results: list[ChatResult] = []
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        results += backend.generate(part)
        if on_batch:
            on_batch(len(part))
    seconds = time.perf_counter() - started
    failed = [(item, r) for item, r in zip(items, results, strict=True) if r.text is None]
    if failed:
        item, first = failed[0]
        raise CircuitlabError(
            f"{len(failed)} of {len(items)} requests failed (question {item.id}: "
            f"{first.error}); fix the cause and rerun: replies received are cached"
        )
    read = letter_reader(config)
    replies = [r.text or "" for r in results]
    choices = [read(t, len(it.options)) for t, it in zip(replies, items, strict=True)]
    details = []
    for r in results:
        detail: dict[str, Any] = {"finish_reason": r.finish_reason, "cached": r.cached}
        if r.reasoning:
            detail["reasoning"] = r.reasoning
        details.append(detail)
    result = summarize(items, config, choices, seconds, replies=replies, details=details)
    result["truncated"] = sum(r.truncated for r in results)
    return result


def summarize(
    items: Sequence[MCQ],
    config: MCQConfig,
    choices: Sequence[int | None],
    seconds: float,
    *,
    replies: Sequence[str] | None = None,
    scores: Sequence[Sequence[float]] | None = None,
    details: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The result of an evaluation from its choices, whichever backend made them."""
    predictions = []
    for k, (item, choice) in enumerate(zip(items, choices, strict=True)):
        record: dict[str, Any] = {
            "id": item.id,
            "subfield": item.subfield,
            "answer": LETTERS[item.answer],
            "choice": LETTERS[choice] if choice is not None else None,
            "correct": choice == item.answer,
        }
        if item.level is not None:  # AMSBench's difficulty: `analog compare` breaks down by it
            record["level"] = item.level
        if scores is not None:
            record["scores"] = [round(s, 4) for s in scores[k]]
        if replies is not None:
            record["reply"] = replies[k]
        if details is not None:
            record.update(details[k])
        predictions.append(record)
    margin = None
    if scores is not None:  # right option's score minus the best wrong one: smoother than 0/1
        gaps = [
            s[item.answer] - max(v for j, v in enumerate(s) if j != item.answer)
            for item, s in zip(items, scores, strict=True)
        ]
        margin = round(sum(gaps) / len(gaps), 4)
    unparsed = [p["id"] for p in predictions if replies is not None and p["choice"] is None]
    generation: dict[str, Any] = {}
    if config.generates:
        generation = {
            "protocol": config.protocol,
            "parser": config.parser,
            "temperature": config.sampling_temperature,
            "seed": config.seed,
            "max_new_tokens": config.new_tokens,
        }
    return {
        **accuracy(predictions),
        "mean_margin": margin,
        "mode": "generate" if config.generates else "loglik",
        "scoring": "parsed letter" if config.generates else config.scoring,
        "method": config.describe(),
        **generation,
        "unparsed": len(unparsed),
        "unparsed_ids": unparsed,
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
