"""The one interface every LLM backend implements: a batch of chat requests in, results out.

A backend never raises for a failed request: the result carries the error, so one bad
request (a 500 that outlived its retries, a timeout) is a recorded failure of one item and
the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
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


@dataclass(frozen=True)
class ChatResult:
    text: str | None  # None when the request failed
    model: str
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)


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
