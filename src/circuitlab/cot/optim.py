"""The optimizer and its learning-rate schedule, as the recipe's fields set them.

The project's recipe and the official one differ here in three fields (decay grouping,
beta2, when the schedule steps); each is its own TrainConfig field so that any one can be
tried alone.
"""

from __future__ import annotations

import torch

from circuitlab.core.schedule import lr_at, lr_at_epoch
from circuitlab.cot.config import TrainConfig
from circuitlab.cot.model import GPT


def learning_rate(config: TrainConfig, step: int, total: int, epoch: int) -> float:
    """The rate of optimizer step `step` of `total`, in epoch `epoch` (lr_step)."""
    peak, warmup, schedule = config.lr, config.warmup, config.schedule
    if config.lr_step == "epoch":
        return lr_at_epoch(epoch, config.epochs, peak=peak, warmup=warmup, schedule=schedule)
    return lr_at(step, total, peak=peak, warmup=warmup, schedule=schedule)


def make_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on `config.decay`'s parameters. The official grouping names
    "bias" and "LayerNorm.weight", and no parameter of its model is named the latter, so it
    decays everything but biases."""
    if config.decay == "all-but-biases":
        decayed = [not name.endswith("bias") for name, _ in model.named_parameters()]
    else:
        decayed = [p.dim() >= 2 for p in model.parameters()]
    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for p, d in zip(params, decayed, strict=True) if d]},
            {"params": [p for p, d in zip(params, decayed, strict=True) if not d],
             "weight_decay": 0.0},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, config.beta2),
        fused=device.type == "cuda",
    )  # fmt: skip
