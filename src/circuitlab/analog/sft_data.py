"""QA-with-reasoning records -> token ids with the loss on the answer tokens only.

A record is one JSON line with either `prompt` and `response` (the released AnalogSeeker
shape: the response holds `<think>...</think><answer>...</answer>`, which distill.py also
writes) or `question` and `answer` (optionally `reasoning`, which then goes into a
`<think>` block the same way). Records that carry a `verdict` (distill.py's reviewer) are
kept only if the verdict is one of `verdicts`.

Each record becomes the tokenizer's chat: [system,] user = prompt, assistant = response.
The prompt part (everything up to and including the assistant header) is tokenized on its
own and the response part is appended, so the boundary is exact whatever the tokenizer's
merges; labels are -100 on the prompt and on padding, the response token ids elsewhere
(including the end-of-turn token, so the model learns to stop). Too long: the response is
cut from the right (`truncation` "cut") or the example left out ("drop"), and either is
counted in a `Truncation` report; a prompt that leaves fewer than 8 response tokens is
skipped and counted.

The reply must be the template's rendering of the response with the response text intact:
a template that rewrites the assistant turn (reasoning-model templates that strip
`<think>...</think>` from it) would train on something other than the data, so it is an
error rather than a silent `response + eos`. A template that only adds text around the
response (a `<think>` prefix, an end-of-turn marker) is kept as rendered: the added text is
supervised like the rest of the reply, since the model must produce it at inference too. A
generation header that itself opens the response (`...assistant\n<think>\n`) is fine too:
that part sits in the masked prompt, as it will at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_jsonl

IGNORE = -100
MIN_RESPONSE_TOKENS = 8
TRUNCATIONS = ("cut", "drop")
EXCERPT = 60  # characters shown of each text, from just before where the two first differ


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt; shifted inside the loss, not here
    source: int  # line number in the data file


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    lost: int  # reply tokens past max_length (0: the example fits)
    answer_cut: bool  # the answer (the <answer> block, else the whole response) lost text
    eos_cut: bool  # the end-of-turn was cut off: the model is not taught to stop here


@dataclass(frozen=True)
class Truncation:
    """What `max_length` did to the examples that passed the verdict filter: over-long ones
    were cut (or dropped), and with the cut went their end-of-turn and often the answer."""

    mode: str  # cut or drop
    max_length: int
    examples: int  # encoded: kept by verdict, prompt short enough
    truncated: int  # longer than max_length (cut, or dropped under "drop")
    tokens: int  # tokens of all encoded examples before any cut
    tokens_lost: int  # tokens training does not see: past the limit, or whole dropped examples
    answer_cut: int  # truncated examples whose answer lost text
    eos_cut: int  # truncated examples that lost their end-of-turn
    dropped: int  # left out under "drop"

    @property
    def share(self) -> float:
        return self.truncated / self.examples if self.examples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "share": round(self.share, 4)}

    def line(self) -> str:
        """One line for the start of training."""
        verb = "dropped" if self.mode == "drop" else "cut"
        return (
            f"{self.truncated} of {self.examples} examples ({100 * self.share:.1f}%) longer than "
            f"--max-length {self.max_length}, {verb}: {self.tokens_lost} of {self.tokens} tokens "
            f"lost, answer cut in {self.answer_cut}, end-of-turn cut in {self.eos_cut}"
        )


@dataclass(frozen=True)
class SFTData:
    examples: list[Example]
    records: int  # records read
    filtered: int  # dropped by verdict
    too_long: int  # prompt too long for max_length
    truncated: int  # response cut to fit (or dropped: see truncation.mode)
    truncation: Truncation


def record_text(record: dict[str, Any], where: str) -> tuple[str, str]:
    """(prompt, response) of one record, or a CircuitlabError naming `where`."""
    if not isinstance(record, dict):
        raise CircuitlabError(f"{where}: a record must be a JSON object")
    prompt, response = record.get("prompt"), record.get("response")
    if prompt is None or response is None:
        prompt = record.get("question")
        answer = record.get("answer")
        if prompt is None or answer is None:
            raise CircuitlabError(
                f"{where}: needs 'prompt' and 'response', or 'question' and 'answer' "
                f"(found keys: {', '.join(sorted(record)) or 'none'})"
            )
        reasoning = record.get("reasoning")
        response = (
            f"<think>\n{reasoning}\n</think>\n<answer>\n{answer}\n</answer>"
            if reasoning
            else str(answer)
        )
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise CircuitlabError(f"{where}: prompt and response must be strings")
    if not prompt.strip() or not response.strip():
        raise CircuitlabError(f"{where}: empty prompt or response")
    return prompt, response


def chat_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The text the model sees before its reply: the chat template with the assistant header,
    or a plain `Question: ... Answer:` frame for a tokenizer without a template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system + chr(10) if system else ''}Question: {prompt}\nAnswer: "


def chat_response(tokenizer: Any, prompt: str, response: str, system: str | None = None) -> str:
    """The reply as the template writes it after `chat_prompt` (with its end-of-turn marker)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        head = chat_prompt(tokenizer, prompt, system)
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if not full.startswith(head):
            raise CircuitlabError(
                f"the chat template of {name} renders the prompt with its generation header "
                f"differently from the start of the whole conversation, so the reply's tokens "
                f"cannot be placed: {_departure(full, head, 'conversation', 'prompt')}; use a "
                "tokenizer whose template renders the assistant turn after that header"
            )
        tail = full[len(head) :]
        # whitespace at the ends is the template's to trim (Llama 3's `| trim`)
        if response.strip() not in tail and not _opened_by_header(head, tail, response):
            raise CircuitlabError(
                f"the chat template of {name} rewrites the assistant turn, so training would "
                f"not see the response as written (reasoning-model templates strip or move "
                f"<think>...</think>): {_departure(tail, response, 'rendered', 'response')}; "
                "use a template that keeps the reply verbatim, or records without that block"
            )
        return tail
    return response + (tokenizer.eos_token or "")


def _opened_by_header(head: str, tail: str, response: str) -> bool:
    """Whether the generation header already wrote the response's start (a header that
    opens `<think>`, as DeepSeek-R1's does) and the reply goes on with the rest verbatim:
    at inference the header is given too, so the reply is still the response."""
    return any(
        head.endswith(response[:k]) and tail.startswith(response[k:])
        for k in range(1, min(len(response), len(head) + 1))
    )


def _departure(got: str, want: str, got_name: str, want_name: str) -> str:
    """Short excerpts of two texts around where they first differ."""
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
              min(len(got), len(want)))  # fmt: skip
    start = max(0, at - EXCERPT // 3)

    def cut(text: str) -> str:
        more = "..." if start + EXCERPT < len(text) else ""
        return ("..." if start else "") + text[start : start + EXCERPT] + more

    return f"{got_name} {cut(got)!r} vs {want_name} {cut(want)!r} (from character {at})"


def answer_text(response: str) -> str:
    """The part of a response that is its answer: the <answer> block, else all of it."""
    start, end = response.find("<answer>"), response.rfind("</answer>")
    if 0 <= start < end:
        return response[start : end + len("</answer>")]
    return response


def encode(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_length: int,
    system: str | None = None,
) -> Encoded | None:
    """The example cut to `max_length`, or None when the prompt leaves no room for a reply."""
    head = tokenizer(chat_prompt(tokenizer, prompt, system), add_special_tokens=False)
    tail = tokenizer(chat_response(tokenizer, prompt, response, system), add_special_tokens=False)
    prompt_ids, response_ids = list(head["input_ids"]), list(tail["input_ids"])
    room = max_length - len(prompt_ids)
    if room < MIN_RESPONSE_TOKENS:
        return None
    lost = max(0, len(response_ids) - room)
    # the end of the turn: the reply's last special token (the template's end-of-turn or
    # the appended eos), else its last token
    special = set(getattr(tokenizer, "all_special_ids", ()))
    end = max((i for i, t in enumerate(response_ids) if t in special), default=-1)
    eos_cut = bool(lost) and (end < 0 or end >= room)
    response_ids = response_ids[:room]
    # decoded, not sliced by characters: where the cut falls is only known in tokens
    answer_cut = bool(lost) and answer_text(response) not in tokenizer.decode(response_ids)
    return Encoded(prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids,
                   lost, answer_cut, eos_cut)  # fmt: skip


def check_records(path: str | Path) -> None:
    """Parse every record of a QA JSONL file without a tokenizer: a bad file is refused
    before minutes go into loading a model for it."""
    path = Path(path)
    records = read_jsonl(path)
    if not records:
        raise CircuitlabError(f"{path} holds no records: nothing to train on")
    for number, record in enumerate(records, start=1):
        record_text(record, f"{path}:{number}")


def load_sft_data(
    path: str | Path,
    tokenizer: Any,
    *,
    max_length: int,
    verdicts: Sequence[str] = ("accept",),
    system: str | None = None,
    truncation: str = "cut",
) -> SFTData:
    """Read and encode a QA JSONL file; every malformed line is an error naming its line.
    `truncation`: "cut" keeps an over-long example's first max_length tokens, "drop"
    leaves it out."""
    if truncation not in TRUNCATIONS:
        raise CircuitlabError(f"truncation {truncation!r}: use {' or '.join(TRUNCATIONS)}")
    path = Path(path)
    records = read_jsonl(path)
    if not records:
        raise CircuitlabError(f"{path} holds no records: nothing to train on")
    examples: list[Example] = []
    filtered = too_long = encoded_count = truncated = tokens = lost = answer_cut = eos_cut = 0
    for number, record in enumerate(records, start=1):
        where = f"{path}:{number}"
        prompt, response = record_text(record, where)
        verdict = record.get("verdict")
        if verdict is not None and verdicts and verdict not in verdicts:
            filtered += 1
            continue
        try:
            encoded = encode(tokenizer, prompt, response, max_length, system)
        except CircuitlabError as e:
            raise CircuitlabError(f"{where}: {e}") from None
        if encoded is None:
            too_long += 1
            continue
        encoded_count += 1
        tokens += len(encoded.input_ids) + encoded.lost
        if encoded.lost:
            truncated += 1
            answer_cut += encoded.answer_cut
            eos_cut += encoded.eos_cut
            if truncation == "drop":
                lost += len(encoded.input_ids) + encoded.lost
                continue
            lost += encoded.lost
        examples.append(Example(encoded.input_ids, encoded.labels, number))
    dropped = truncated if truncation == "drop" else 0
    if not examples:
        raise CircuitlabError(
            f"{path}: none of its {len(records)} records is usable ({filtered} filtered by "
            f"verdict {list(verdicts)}, {too_long} with a prompt longer than max_length "
            f"{max_length}, {dropped} dropped as longer than it by --truncation drop); "
            "widen --verdicts, raise --max-length or use --truncation cut"
        )
    report = Truncation(truncation, max_length, encoded_count, truncated, tokens, lost,
                        answer_cut, eos_cut, dropped)  # fmt: skip
    return SFTData(examples, len(records), filtered, too_long, truncated, report)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels (IGNORE on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
