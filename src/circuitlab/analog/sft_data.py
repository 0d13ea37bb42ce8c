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
cut from the right; a prompt that leaves fewer than 8 response tokens is skipped and
counted.
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


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt; shifted inside the loss, not here
    source: int  # line number in the data file


@dataclass(frozen=True)
class SFTData:
    examples: list[Example]
    records: int  # records read
    filtered: int  # dropped by verdict
    too_long: int  # prompt too long for max_length
    truncated: int  # response cut to fit


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
        if full.startswith(head):
            return full[len(head) :]
        return response + (tokenizer.eos_token or "")
    return response + (tokenizer.eos_token or "")


def encode(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_length: int,
    system: str | None = None,
) -> tuple[list[int], list[int], bool] | None:
    """(input_ids, labels, truncated), or None when the prompt leaves no room for a response."""
    head = tokenizer(chat_prompt(tokenizer, prompt, system), add_special_tokens=False)
    tail = tokenizer(chat_response(tokenizer, prompt, response, system), add_special_tokens=False)
    prompt_ids, response_ids = list(head["input_ids"]), list(tail["input_ids"])
    room = max_length - len(prompt_ids)
    if room < MIN_RESPONSE_TOKENS:
        return None
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return (
        prompt_ids + response_ids,
        [IGNORE] * len(prompt_ids) + response_ids,
        truncated,
    )


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
) -> SFTData:
    """Read and encode a QA JSONL file; every malformed line is an error naming its line."""
    path = Path(path)
    records = read_jsonl(path)
    if not records:
        raise CircuitlabError(f"{path} holds no records: nothing to train on")
    examples: list[Example] = []
    filtered = too_long = truncated = 0
    for number, record in enumerate(records, start=1):
        prompt, response = record_text(record, f"{path}:{number}")
        verdict = record.get("verdict")
        if verdict is not None and verdicts and verdict not in verdicts:
            filtered += 1
            continue
        encoded = encode(tokenizer, prompt, response, max_length, system)
        if encoded is None:
            too_long += 1
            continue
        ids, labels, cut = encoded
        truncated += cut
        examples.append(Example(ids, labels, number))
    if not examples:
        raise CircuitlabError(
            f"{path}: none of its {len(records)} records is usable ({filtered} filtered by "
            f"verdict {list(verdicts)}, {too_long} with a prompt longer than max_length "
            f"{max_length}); widen --verdicts or raise --max-length"
        )
    return SFTData(examples, len(records), filtered, too_long, truncated)


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
