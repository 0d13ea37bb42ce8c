"""Responses cached on disk by content hash: a rerun or resumed run pays nothing twice.

The key is the SHA-256 of the backend identity (kind and model) and the full request
(messages, token limit, temperature, seed, prefill). Only successful responses are stored
(with why they ended, so a cached truncated reply is still known to be one),
one small JSON file each, written atomically, so a kill never leaves a broken entry and a
failed request is retried next time. No API key is ever part of a key or an entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from circuitlab.analog.llm.base import Backend, ChatRequest, ChatResult
from circuitlab.core.io import atomic_write_json


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class CachedBackend:
    """Wraps a backend; `generate` answers from the cache what it can, the backend the rest."""

    def __init__(self, backend: Backend, directory: str | Path) -> None:
        self.backend = backend
        self.directory = Path(directory)
        self.stats = CacheStats()

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def identity(self) -> str:
        return self.backend.identity

    @property
    def continues_prefill(self) -> bool:
        return bool(getattr(self.backend, "continues_prefill", False))

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def lookup(self, request: ChatRequest) -> ChatResult | None:
        path = self.path(request.key(self.identity))
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return ChatResult(
            text=entry["text"],
            model=entry["model"],
            cached=True,
            finish_reason=entry.get("finish_reason"),
            reasoning=entry.get("reasoning"),
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [self.lookup(r) for r in requests]
        missing = [i for i, r in enumerate(results) if r is None]
        self.stats.hits += len(requests) - len(missing)
        self.stats.misses += len(missing)
        if missing:
            fresh = self.backend.generate([requests[i] for i in missing])
            for i, result in zip(missing, fresh, strict=True):
                results[i] = result
                if result.error is None and result.text is not None:
                    atomic_write_json(
                        self.path(requests[i].key(self.identity)),
                        {
                            "model": result.model,
                            "text": result.text,
                            "seconds": result.seconds,
                            "finish_reason": result.finish_reason,
                            "reasoning": result.reasoning,
                        },
                    )
        return [r for r in results if r is not None]
