"""Evaluate one model: multiple-choice accuracy on the domain, drift on general text.

The model is any spec core.lm.load_lm takes, or what NSC-SFT wrote (a run directory or its
model/), which also names the original model the drift is measured against. For a plain
model, `base` names the original (e.g. the instruct model a full fine-tune started from);
with no original known, the drift is reported as perplexity only.

Everything loaded here (the model, a LoRA run's base, a full fine-tune's original for the
drift) comes in `dtype` on `device`, so that a 32B model can be evaluated on a GPU in
bfloat16. The scores are float32 whatever the weights (the MCQ and drift code upcast the
logits).

With `backend` openai the model is a served name on any OpenAI-compatible server (vLLM,
llama.cpp, Ollama), asked through distillation's HTTP client (its retries, concurrency and
on-disk response cache; the key from the environment variable it names). A server gives
replies, not weights: only the generative protocols run there, and no drift is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.analog.distill import DistillConfig
from circuitlab.analog.drift import check_max_tokens, load_probe, measure_drift
from circuitlab.analog.mcq import MCQConfig, evaluate_mcq, evaluate_mcq_remote, load_mcq
from circuitlab.analog.nsc_sft import TrainedLM, load_model
from circuitlab.core.config import nested, option, option_of, require
from circuitlab.core.devices import reuse_freed_memory
from circuitlab.core.io import atomic_write_json
from circuitlab.core.lm import load_lm, torch_dtype


def _path_text(text: str) -> str:
    return str(Path(text))


@dataclass(frozen=True)
class EvalConfig:
    """`analog eval`: which model, on which questions and text, where; the MCQ settings are
    MCQConfig's, kept at the top level of a TOML file."""

    backend: str = option(
        "hf", "hf (the model in-process) or openai (an OpenAI-compatible server)."
    )
    model: str = option(
        "embedded",
        "A model spec, or an `analog train` run directory (or its model/); openai: the "
        "served model name.",
    )
    base_url: str | None = option_of(DistillConfig, "base_url")
    api_key_env: str = option_of(DistillConfig, "api_key_env")
    concurrency: int = option_of(DistillConfig, "concurrency")
    timeout_s: float = option_of(DistillConfig, "timeout_s")
    cache: str | None = option(
        None,
        "openai: folder of the response cache \\[default: llm-cache/ beside --out; none "
        "without --out].",
        parse=_path_text,
    )
    mcq: str | None = option(
        None,
        "Multiple-choice questions, a JSON array or JSONL (question, options, answer or "
        "groundtruth letter, optional subfield/level) \\[default: the shipped 60-question "
        "analog probe].",
        parse=_path_text,
    )
    questions: MCQConfig = nested(MCQConfig, flatten=True)  # noqa: RUF009 - a default_factory
    base: str | None = option(
        None, "Original model for the drift of a full fine-tune \\[default: from the run]."
    )
    probe: str | None = option(
        None, "General-domain text \\[default: the shipped probe].", parse=_path_text
    )
    drift: bool = option(True, "Measure drift on general text.")
    drift_tokens: int = option(
        0, "Read at most N tokens of the probe for the drift (spread over it); 0: all."
    )
    device: str = option("auto", "auto, cpu, cuda or mps.")
    dtype: str = option(
        "float32", "Load the weights as float32, bfloat16 or float16 (half the memory)."
    )
    threads: int = option(0, "torch CPU threads; 0: torch default.")

    def __post_init__(self) -> None:
        check_max_tokens(self.drift_tokens)
        require(self.backend in BACKENDS, f"backend {self.backend!r}: use hf or openai")
        if self.backend == "openai":
            require(bool(self.base_url), "the openai backend needs --base-url")
            require(
                self.model != option_default(EvalConfig, "model"),
                "the openai backend needs --model (the served model name)",
            )
            require(
                self.questions.generates,
                "loglik scoring needs the model's weights: use --backend hf, or with openai "
                "--protocol amsbench or --mode generate",
            )
            asked = [flag for flag, given in (("--probe", self.probe), ("--base", self.base),
                     ("--drift-tokens", self.drift_tokens)) if given]  # fmt: skip
            require(
                not asked,
                f"{', '.join(asked)}: drift needs the model's weights, which the openai "
                "backend does not have: use --backend hf",
            )


BACKENDS = ("hf", "openai")
DRIFT_SKIPPED = "skipped: drift needs the model's weights; the openai backend has only replies"


def option_default(cls: type, name: str) -> Any:
    return cls.__dataclass_fields__[name].default


def evaluate_remote(
    config: EvalConfig,
    out: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """MCQ accuracy of a served model (config.backend openai): the generative protocols,
    requests in flight `concurrency` at a time, replies cached beside `out` (or in
    config.cache) so that a rerun asks the server nothing twice."""
    from circuitlab.analog.llm.cache import CachedBackend
    from circuitlab.analog.llm.openai_http import HTTPConfig, OpenAIBackend

    items = load_mcq(config.mcq)
    http = HTTPConfig(
        base_url=str(config.base_url),
        model=config.model,
        api_key_env=config.api_key_env,
        timeout_s=config.timeout_s,
        concurrency=config.concurrency,
    )
    backend: Any = OpenAIBackend(http, api_key=api_key)
    cache = config.cache or (Path(out).parent / "llm-cache" if out is not None else None)
    if cache is not None:
        backend = CachedBackend(backend, cache)
    chunk = max(config.questions.batch_size, config.concurrency)
    mcq = evaluate_mcq_remote(backend, items, config.questions, on_batch, chunk=chunk)
    result: dict[str, Any] = {
        "model": config.model,
        "source": http.base_url,
        "backend": "openai",
        "mcq_file": str(config.mcq or ""),
        "mcq": mcq,
        "drift_skipped": DRIFT_SKIPPED,
    }
    if isinstance(backend, CachedBackend):
        result["cache"] = {
            "folder": str(cache),
            "hits": backend.stats.hits,
            "misses": backend.stats.misses,
        }
    if out is not None:
        atomic_write_json(out, result)
    return result


def evaluate_mcq_and_drift(
    model: str | TrainedLM | None,
    *,
    mcq: str | Path | None = None,
    config: MCQConfig | None = None,
    probe: str | Path | None = None,
    base: str | None = None,
    drift: bool = True,
    drift_tokens: int = 0,
    window: int = 256,
    out: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """MCQ accuracy (overall, per subfield, Wilson 95% CI) and general-text drift.

    `drift_tokens` (> 0) reads only that many tokens of the probe. Writes `out` (JSON,
    atomically) when given. `model` may be an already loaded TrainedLM
    (it stays as it is; the drift's original then comes in `dtype` on the model's device).
    """
    weights = torch_dtype(dtype)  # a bad name or token cap fails before anything slow
    check_max_tokens(drift_tokens)
    reuse_freed_memory()  # batches of [rows, tokens, vocab] logits, one after another
    items = load_mcq(mcq)
    text = load_probe(probe) if drift else None
    if isinstance(model, TrainedLM):
        trained = model
    else:
        trained = load_model(model, dtype=dtype, device=str(device))
    lm = trained.lm
    first = next(lm.model.parameters())
    result: dict[str, Any] = {
        "model": lm.name,
        "source": lm.source,
        "mcq_file": str(mcq or ""),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
    }
    result["mcq"] = evaluate_mcq(lm, items, config, on_batch=on_batch)
    if text is not None:
        reference = None
        if not trained.lora:
            original = base if base is not None else trained.base
            if original is not None:
                reference = load_lm(original, dtype=weights, device=str(first.device)).model
        result["drift"] = measure_drift(
            lm.model,
            lm.tokenizer,
            text,
            reference=reference,
            window=window,
            max_tokens=drift_tokens,
        )
        result["drift"]["against"] = (
            "adapters disabled"
            if trained.lora
            else (base or trained.base or "itself (no original model known)")
        )
    if out is not None:
        atomic_write_json(out, result)
    return result
