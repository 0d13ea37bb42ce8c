"""Drift from the original model on general text: per-token KL and perplexity.

The trade-off AnalogSeeker's NSC-SFT is about is domain knowledge gained against general
behaviour lost. The second half is measured here on a general-domain probe (the shipped
data/general_probe.txt, about 18 kB: 38 short self-written paragraphs of history, cooking,
geography, everyday science and daily life, nothing about electronics), as

    kl          mean over tokens of KL(p_model || p_original) over the full vocabulary
                (the direction NSC-SFT penalises by default; the other is reported too)
    perplexity  exp of the model's mean negative log-likelihood of the text, next to the
                original model's, so a change reads directly.

The text is cut into windows of `window` tokens; every token after the first of a window
is predicted. `max_tokens` caps the tokens read, for a quick run: whole windows spread
evenly over the text, so a capped probe still samples every part of it rather than only
its first paragraphs. For a LoRA model the original is the same weights with the adapters
off.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from circuitlab.analog.reference import is_peft, reference_context
from circuitlab.core.config import require
from circuitlab.core.errors import CircuitlabError

PROBE_NAME = "general_probe.txt"


def shipped_probe() -> Path:
    return Path(str(resources.files("circuitlab.analog") / "data" / PROBE_NAME))


def load_probe(path: str | Path | None = None) -> str:
    path = Path(path) if path is not None else shipped_probe()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CircuitlabError(f"probe text {path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise CircuitlabError(f"probe text {path} is not a UTF-8 text file: {e}") from None
    if len(text.split()) < 20:
        raise CircuitlabError(f"probe text {path} is too short (fewer than 20 words)")
    return text


def check_max_tokens(max_tokens: int) -> None:
    """A token cap is 0 (the whole probe) or at least 2: one token of context, one predicted."""
    require(
        max_tokens == 0 or max_tokens >= 2,
        f"drift tokens {max_tokens}: 0 (the whole probe) or at least 2",
    )


def windows(tokenizer: Any, text: str, window: int, max_tokens: int = 0) -> list[list[int]]:
    """Windows of `text` to score; with `max_tokens` (> 0), at most that many tokens in all."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if max_tokens <= 0 or max_tokens >= len(ids):
        chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
        return [c for c in chunks if len(c) > 1]
    window = min(window, max_tokens)
    # full windows only (a short last one would leave part of the cap unused), picked
    # evenly over the text; len(ids) > max_tokens >= window, so there is at least one
    full = [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)]
    keep = max_tokens // window
    return [full[k * len(full) // keep] for k in range(keep)]


@torch.no_grad()
def measure_drift(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    reference: Any = None,
    window: int = 256,
    batch_size: int = 4,
    max_tokens: int = 0,
) -> dict[str, Any]:
    """KL to the original model and perplexity of both on `text` (at most `max_tokens`
    of it when > 0).

    `reference`: the original model, or None when `model` is a peft model (adapters off)
    or is itself the original (then the KL is 0 by definition and is not computed twice).
    """
    check_max_tokens(max_tokens)
    chunks = windows(tokenizer, text, window, max_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = {"nll": 0.0, "ref_nll": 0.0, "kl": 0.0, "kl_reverse": 0.0}
    tokens = 0
    same = reference is None and not is_peft(model)
    try:
        for start in range(0, len(chunks), batch_size):
            part = chunks[start : start + batch_size]
            width = max(len(c) for c in part)
            ids = torch.full((len(part), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for row, c in enumerate(part):
                ids[row, : len(c)] = torch.tensor(c)
                mask[row, : len(c)] = 1
            ids, mask = ids.to(device), mask.to(device)
            predicted = mask[:, 1:].bool()
            targets = ids[:, 1:][predicted]
            logp = _logp(model, ids, mask)[:, :-1][predicted]
            if same:
                ref_logp = logp
            elif reference is None:
                with reference_context(model):
                    ref_logp = _logp(model, ids, mask)[:, :-1][predicted]
            else:
                ref_logp = _logp(reference, ids, mask)[:, :-1][predicted]
            sums["nll"] -= float(logp.gather(-1, targets[:, None]).sum())
            sums["ref_nll"] -= float(ref_logp.gather(-1, targets[:, None]).sum())
            if not same:
                sums["kl"] += float((logp.exp() * (logp - ref_logp)).sum())
                sums["kl_reverse"] += float((ref_logp.exp() * (ref_logp - logp)).sum())
            tokens += int(predicted.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise CircuitlabError("the probe text has no tokens to predict")
    return {
        "tokens": tokens,
        "max_tokens": max_tokens,
        "kl": sums["kl"] / tokens,
        "kl_reference_model": sums["kl_reverse"] / tokens,
        "perplexity": math.exp(sums["nll"] / tokens),
        "reference_perplexity": math.exp(sums["ref_nll"] / tokens),
    }


def _logp(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    return torch.log_softmax(out.logits.float(), dim=-1)
