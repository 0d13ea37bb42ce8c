"""The embedded default: SmolLM2-135M-Instruct (or any local causal LM) through transformers.

Requests are grouped by sampling settings, sorted by prompt length and generated in
left-padded batches, which on a CPU is several times the throughput of one at a time. The
model loads on the first request that misses the cache, so a fully cached rerun never
loads it. JSON requests stop as soon as the reply's object closes ("}"), which saves most
of the tokens a small model would otherwise ramble on with. A reply that used its whole
token budget without ending is reported as finish_reason "length", as a server does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from circuitlab.analog.llm.base import TRUNCATED, ChatRequest, ChatResult
from circuitlab.core.config import require
from circuitlab.core.lm import display_name, load_lm


class EmbeddedBackend:
    continues_prefill = True

    def __init__(
        self, spec: str | None = None, batch_size: int = 8, lm: Any = None, threads: int = 1
    ) -> None:
        """`spec` as for core.lm.load_lm (None: the embedded SmolLM2); `lm` an already loaded
        LoadedLM to reuse; `threads` torch CPU threads while generating (0: torch's default).

        One thread is the default because on a shared small CPU a second torch thread that
        must wait for a busy core makes every decoding step wait: measured here under load,
        1 thread decoded at 0.10 s/step and 2 threads at 1.1 s/step.
        """
        require(batch_size >= 1, f"batch_size {batch_size}: use at least 1")
        require(threads >= 0, f"threads {threads}: use 0 (torch default) or more")
        self.spec = spec
        self.batch_size = batch_size
        self.threads = threads
        self._lm = lm
        self._name = lm.name if lm is not None else display_name(spec)

    @property
    def model(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        return f"embedded:{self._name}"

    @property
    def lm(self) -> Any:
        if self._lm is None:
            self._lm = load_lm(self.spec)
        return self._lm

    def prompt(self, request: ChatRequest) -> str:
        chat = [{"role": role, "content": content} for role, content in request.messages]
        text = self.lm.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        return text + request.prefill

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.temperature, r.max_tokens, r.seed, r.json)].append(i)
        for (temperature, max_tokens, seed, as_json), indices in groups.items():
            prompts = {i: self.prompt(requests[i]) for i in indices}
            indices = sorted(indices, key=lambda i: len(prompts[i]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts, finishes, seconds = self._generate(
                    [prompts[i] for i in chunk], temperature, max_tokens, seed, as_json
                )
                for i, text, finish in zip(chunk, texts, finishes, strict=True):
                    results[i] = ChatResult(
                        text=requests[i].prefill + text,
                        model=self.model,
                        seconds=seconds,
                        finish_reason=finish,
                    )
        return [r for r in results if r is not None]

    def _generate(
        self, prompts: list[str], temperature: float, max_tokens: int, seed: int, as_json: bool
    ) -> tuple[list[str], list[str], float]:
        import torch

        from circuitlab.core.threads import torch_threads

        tokenizer, model = self.lm.tokenizer, self.lm.model
        tokenizer.padding_side = "left"
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        options: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            options.update(temperature=temperature, top_p=0.95)
            torch.manual_seed(seed)
        if as_json:
            options.update(stop_strings=["}"], tokenizer=tokenizer)
        started = time.perf_counter()
        with torch_threads(self.threads), torch.inference_mode():
            output = model.generate(**encoded.to(model.device), **options)
        seconds = time.perf_counter() - started
        new = output[:, encoded["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        ends = _end_ids(model, tokenizer)
        finishes = [
            _finish_reason(row.tolist(), ends, text, as_json, max_tokens)
            for row, text in zip(new, texts, strict=True)
        ]
        return texts, finishes, seconds / len(prompts)


def _end_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end (or, once a row has ended, pad) a generated row."""
    ids: set[int] = set()
    for value in (
        getattr(model.generation_config, "eos_token_id", None),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _finish_reason(row: list[int], ends: set[int], text: str, as_json: bool, limit: int) -> str:
    """ "length" when the row used all `limit` new tokens and ended neither with an end of
    sequence (a row that ended early is padded with end/pad ids) nor at the JSON stop
    string: the server's finish_reason, for a model that has no server."""
    if len(row) < limit or any(token in ends for token in row):
        return "stop"
    if as_json and "}" in text:
        return "stop"
    return TRUNCATED
