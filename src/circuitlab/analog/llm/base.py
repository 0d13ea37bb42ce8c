"""The one interface every LLM backend implements: a batch of chat requests in, results out.

A backend never raises for a failed request: the result carries the error, so one bad
request (a 500 that outlived its retries, a timeout) is a recorded failure of one item and
the rest of the batch goes on. A result also says why the reply ended (`finish_reason`):
a reply cut off by its token limit must never pass for a complete one, and only the
backend knows it was cut (a repaired JSON object looks whole).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion.

    prefill: the start of the assistant's reply (e.g. '{"question": "'); the embedded
    backend continues from it, which keeps a small model on the JSON track, and returns it
    as part of the text. Servers ignore it (a capable model writes the JSON itself).
    json: the reply is one flat JSON object: the embedded backend stops at its closing
    brace; the HTTP backend may ask the server for JSON mode (see its config).
    """

    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    prefill: str = ""
    json: bool = False

    def key(self, backend_id: str) -> str:
        """Content hash of everything that determines the reply, including the backend."""
        payload = json.dumps(
            {"backend": backend_id, "request": self.__dict__}, sort_keys=True, default=list
        )
        return hashlib.sha256(payload.encode()).hexdigest()


# finish_reason of a reply that hit its token limit (OpenAI's spelling; the embedded
# backend reports it when generation used every new token without an end of sequence)
TRUNCATED = "length"


@dataclass(frozen=True)
class ChatResult:
    """One reply. `reasoning`: a reasoning model's thinking, kept apart from `text` (the
    reply proper, where the answer or JSON is read); `finish_reason`: "stop", "length"
    (TRUNCATED) or None where the backend did not say (a cache entry from before it did)."""

    text: str | None  # None when the request failed
    model: str
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    reasoning: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == TRUNCATED


class Backend(Protocol):
    @property
    def model(self) -> str:
        """The model name recorded with every part it writes."""
        ...

    @property
    def identity(self) -> str:
        """What the response cache keys on (backend kind and model; never a secret)."""
        ...

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]: ...


def messages(system: str, user: str) -> tuple[tuple[str, str], ...]:
    return (("system", system), ("user", user))


_THINK = re.compile(r"\s*<think>(.*?)(?:</think>|$)", re.S)


def split_thinking(content: str) -> tuple[str | None, str]:
    """(thinking, reply) of a reply that opens with `<think>...</think>` (Qwen3, DeepSeek-R1
    and their kin served without a reasoning parser): the answer or JSON is read from what
    follows `</think>`, never from the thinking. An unclosed `<think>` (the token limit hit
    mid-thought) is all thinking and no reply. Content without one is returned as it is."""
    found = _THINK.match(content)
    if found is None:
        return None, content
    return found.group(1).strip(), content[found.end() :].lstrip()
