"""Any OpenAI-compatible chat-completions server over HTTP (vLLM, llama.cpp, Ollama, hosted).

This is how distillation scales: a vLLM server (tensor parallel, or several behind a load
balancer / Ray Serve) does the generation and this client keeps `concurrency` requests in
flight with a thread pool (standard library only: urllib + concurrent.futures).
- Retries with exponential backoff and jitter on 429, 5xx, connection errors, timeouts and
  malformed response bodies; a Retry-After header is honoured (capped). Other 4xx errors
  (bad model name, bad key) fail at once: retrying cannot fix them.
- A reasoning model's thinking (the message's `reasoning_content` or `reasoning`, as vLLM's
  and others' reasoning parsers return it, or a leading `<think>...</think>` in the
  content) is kept apart as the result's `reasoning`; `text` is the reply after it.
- `extra_body` (chat_template_kwargs, top_p, guided decoding: whatever the server takes) is
  merged into every request body; it is part of the cache identity, since it changes
  the replies.
- The API key comes from the constructor or the environment variable named in the config;
  it is sent in the Authorization header and nowhere else: the config (which is written to
  the run directory) holds only the variable's name, and error messages pass through
  core.secrets.redact before they leave the client (a server may echo the header back).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from circuitlab.analog.llm.base import ChatRequest, ChatResult, split_thinking
from circuitlab.core.config import require
from circuitlab.core.secrets import redact

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class HTTPConfig:
    base_url: str  # e.g. http://localhost:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8
    json_mode: bool = False  # send response_format={"type": "json_object"} for JSON requests
    extra_body: dict[str, Any] | None = None  # merged into every request body

    def __post_init__(self) -> None:
        require(
            self.base_url.startswith(("http://", "https://")),
            f"base URL {self.base_url!r} must start with http:// or https://",
        )
        require(bool(self.model), "the HTTP backend needs a model name (--model)")
        require(self.timeout_s > 0, f"timeout {self.timeout_s}: must be positive")
        require(self.retries >= 0, f"retries {self.retries}: must be >= 0")
        require(self.concurrency >= 1, f"concurrency {self.concurrency}: use at least 1")
        require(
            self.extra_body is None or isinstance(self.extra_body, dict),
            f"extra body {self.extra_body!r}: must be a JSON object",
        )


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend:
    def __init__(self, config: HTTPConfig, api_key: str | None = None) -> None:
        self.config = config
        self._key = api_key if api_key is not None else os.environ.get(config.api_key_env)
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.requests_sent = 0

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def identity(self) -> str:
        if not self.config.extra_body:
            return f"openai:{self.config.model}"
        extra = json.dumps(self.config.extra_body, sort_keys=True)
        return f"openai:{self.config.model}:{hashlib.sha256(extra.encode()).hexdigest()[:16]}"

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if len(requests) <= 1 or self.config.concurrency == 1:
            return [self.complete(r) for r in requests]
        workers = min(self.config.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-http") as pool:
            return list(pool.map(self.complete, requests))

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": role, "content": text} for role, text in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if request.json and self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(self.config.extra_body or {})
        return body

    def complete(self, request: ChatRequest) -> ChatResult:
        """One request with retries; never raises for server or network trouble."""
        data = json.dumps(self.body(request)).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        started = time.perf_counter()
        last = "no attempt made"
        for attempt in range(self.config.retries + 1):
            try:
                reply = self._post(data, headers)
                return ChatResult(
                    text=reply["text"],
                    model=reply["model"] or self.config.model,
                    seconds=time.perf_counter() - started,
                    usage=reply["usage"],
                    finish_reason=reply["finish_reason"],
                    reasoning=reply["reasoning"],
                )
            except RetryableError as e:
                last = str(e)
                if attempt == self.config.retries:
                    break
                delay = min(self.config.max_backoff_s, self.config.backoff_s * 2**attempt)
                delay *= 0.5 + random.random() / 2
                if e.retry_after is not None:
                    delay = min(self.config.max_backoff_s, max(delay, e.retry_after))
                time.sleep(delay)
            except PermanentError as e:
                last = str(e)
                break
        return ChatResult(
            text=None,
            model=self.config.model,
            # a server may echo the request (its headers included) into its error body
            error=redact(f"{last} (after {attempt + 1} attempt(s))", [self._key]),
            seconds=time.perf_counter() - started,
        )

    def _post(self, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        self.requests_sent += 1
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                raw = self._read_by_deadline(response)
        except urllib.error.HTTPError as e:
            # redacted whole, then cut: a key cut in half would no longer match
            detail = redact(e.read(1 << 16).decode("utf-8", "replace"), [self._key])[:200]
            message = f"HTTP {e.code} from {self.url}: {detail}"
            if e.code in RETRY_STATUS:
                raise RetryableError(message, _retry_after(e.headers.get("Retry-After"))) from None
            raise PermanentError(message) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError) as e:  # fmt: skip
            reason = getattr(e, "reason", e)
            raise RetryableError(f"cannot reach {self.url}: {reason}") from None
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            message = choice["message"]
            text = message["content"]
            finish = choice.get("finish_reason")
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if text is None and isinstance(finish, str):
                # a finished choice with no content (a reasoning model that spent the limit
                # thinking, or thought and said nothing): an empty or truncated reply for
                # the caller to judge, not a malformed body to retry
                text = ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError,
                AttributeError) as e:  # fmt: skip
            snippet = redact(raw.decode("utf-8", "replace"), [self._key])[:120]
            raise RetryableError(f"malformed response from {self.url} ({e}): {snippet!r}") from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        inline, text = split_thinking(text)
        parts = [p for p in (thinking, inline) if isinstance(p, str) and p.strip()]
        return {
            "text": text,
            "reasoning": "\n\n".join(p.strip() for p in parts) or None,
            "model": str(body.get("model") or ""),
            "usage": usage,
            "finish_reason": finish if isinstance(finish, str) else None,
        }

    def _read_by_deadline(self, response: Any) -> bytes:
        """The body, read in pieces against one deadline for the whole request: the socket
        timeout alone restarts at every byte, so a server that trickles never timed out."""
        deadline = time.monotonic() + self.config.timeout_s
        chunks = []
        while chunk := response.read1(1 << 16):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise RetryableError(
                    f"no complete reply from {self.url} within {self.config.timeout_s:g} s"
                )
        return b"".join(chunks)


class PermanentError(Exception):
    pass


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
