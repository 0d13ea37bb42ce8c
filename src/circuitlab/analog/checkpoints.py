"""What an analog training checkpoint holds of the model: its trainable parameters only.

With LoRA those are the adapters (megabytes, not the base model's gigabytes); the frozen
rest is reloaded from the base model on resume. How checkpoints are written, verified and
rotated is core/checkpoint.py's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def restore_trainable(model: Any, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Copy checkpointed trainable weights into `model` in place (device and dtype kept)."""
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise RuntimeError(f"checkpoint {path} has weights the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
