"""Evaluate one model: multiple-choice accuracy on the domain, drift on general text.

The model is any spec core.lm.load_lm takes, or what NSC-SFT wrote (a run directory or its
model/), which also names the original model the drift is measured against. For a plain
model, `base` names the original (e.g. the instruct model a full fine-tune started from);
with no original known, the drift is reported as perplexity only.

Everything loaded here (the model, a LoRA run's base, a full fine-tune's original for the
drift) comes in `dtype` on `device`, so that a 32B model can be evaluated on a GPU in
bfloat16. The scores are float32 whatever the weights (the MCQ and drift code upcast the
logits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.analog.drift import check_max_tokens, load_probe, measure_drift
from circuitlab.analog.mcq import MCQConfig, evaluate_mcq, load_mcq
from circuitlab.analog.nsc_sft import TrainedLM, load_model
from circuitlab.core.config import nested, option
from circuitlab.core.devices import reuse_freed_memory
from circuitlab.core.io import atomic_write_json
from circuitlab.core.lm import load_lm, torch_dtype


def _path_text(text: str) -> str:
    return str(Path(text))


@dataclass(frozen=True)
class EvalConfig:
    """`analog eval`: which model, on which questions and text, where; the MCQ settings are
    MCQConfig's, kept at the top level of a TOML file."""

    model: str = option(
        "embedded", "A model spec, or an `analog train` run directory (or its model/)."
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
