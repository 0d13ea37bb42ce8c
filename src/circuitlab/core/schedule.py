"""The learning-rate schedule every trainer uses: linear warmup, then a decay to zero.

It is a pure function of the optimizer step, so a resumed run continues the schedule from
the step it restored without any scheduler state in the checkpoint.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: int, total: int, *, peak: float, warmup: float, schedule: str) -> float:
    """Learning rate at optimizer step `step` (0-based) of `total`.

    The first `int(warmup * total)` steps ramp up linearly to `peak` (step 0 already takes
    one ramp step, so no step trains at lr 0); then `constant` stays at `peak`, `linear`
    falls to 0 and `cosine` follows half a cosine to 0 at the last step.
    """
    warm = int(warmup * total)
    if step < warm:
        return peak * (step + 1) / warm
    if schedule == "constant" or total <= warm:
        return peak
    frac = (step - warm) / max(total - warm, 1)
    if schedule == "linear":
        return peak * (1.0 - frac)
    return peak * 0.5 * (1.0 + math.cos(math.pi * frac))


def lr_at_epoch(epoch: int, epochs: int, *, peak: float, warmup: float, schedule: str) -> float:
    """Learning rate of epoch `epoch` when the schedule is stepped once per epoch, as the
    official cot code steps transformers' `get_scheduler` (warmup of `int(warmup * epochs)`
    epochs that starts at lr 0, then the same decays as `lr_at`)."""
    warm = int(warmup * epochs)
    if epoch < warm:
        return peak * epoch / warm
    if schedule == "constant":
        return peak
    frac = (epoch - warm) / max(1, epochs - warm)
    if schedule == "linear":
        return peak * max(0.0, 1.0 - frac)
    return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * frac)))
