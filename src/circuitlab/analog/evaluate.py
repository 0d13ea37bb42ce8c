"""Evaluate one model: multiple-choice accuracy on the domain, drift on general text.

The model is any spec core.lm.load_lm takes, or what NSC-SFT wrote (a run directory or its
model/), which also names the original model the drift is measured against. For a plain
model, `base` names the original (e.g. the instruct model a full fine-tune started from);
with no original known, the drift is reported as perplexity only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitlab.analog.drift import load_probe, measure_drift
from circuitlab.analog.mcq import MCQConfig, evaluate_mcq, load_mcq
from circuitlab.analog.nsc_sft import TrainedLM, load_model
from circuitlab.core.io import atomic_write_json
from circuitlab.core.lm import load_lm


def evaluate_model(
    model: str | TrainedLM | None,
    *,
    mcq: str | Path | None = None,
    config: MCQConfig | None = None,
    probe: str | Path | None = None,
    base: str | None = None,
    drift: bool = True,
    window: int = 256,
    out: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """MCQ accuracy (overall, per subfield, Wilson 95% CI) and general-text drift.

    Writes `out` (JSON, atomically) when given. `model` may be an already loaded TrainedLM.
    """
    items = load_mcq(mcq)
    text = load_probe(probe) if drift else None
    trained = model if isinstance(model, TrainedLM) else load_model(model)
    lm = trained.lm
    result: dict[str, Any] = {"model": lm.name, "source": lm.source, "mcq_file": str(mcq or "")}
    result["mcq"] = evaluate_mcq(lm, items, config, on_batch=on_batch)
    if text is not None:
        reference = None
        if not trained.lora:
            original = base if base is not None else trained.base
            if original is not None:
                reference = load_lm(original).model.to(next(lm.model.parameters()).device)
        result["drift"] = measure_drift(
            lm.model, lm.tokenizer, text, reference=reference, window=window
        )
        result["drift"]["against"] = (
            "adapters disabled"
            if trained.lora
            else (base or trained.base or "itself (no original model known)")
        )
    if out is not None:
        atomic_write_json(out, result)
    return result
