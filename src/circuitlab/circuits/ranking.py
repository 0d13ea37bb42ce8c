"""A method's answer: one score per head, its ranking, and the circuit at a threshold.

Every discovery method (the SAE method, the baselines) returns a `Ranking`, so the code that
scores, saves and plots results never needs to know which method produced it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Ranking:
    """One score per head, [n_layers, n_heads], larger = more likely in the circuit."""

    method: str
    scores: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def ranked(self) -> list[tuple[int, int]]:
        """All heads, best first (ties broken by position: layer, then head)."""
        flat = self.scores.flatten()
        order = sorted(range(len(flat)), key=lambda i: (-float(flat[i]), i))
        n_heads = self.scores.shape[1]
        return [(i // n_heads, i % n_heads) for i in order]

    def circuit(self, threshold: float) -> list[tuple[int, int]]:
        """Heads scoring at least `threshold` x the top score (nothing if no head scores > 0)."""
        top = float(self.scores.max())
        if top <= 0:
            return []
        return [lh for lh in self.ranked() if float(self.scores[lh]) >= threshold * top]

    def to_json(self, threshold: float) -> dict[str, Any]:
        return {
            "method": self.method,
            "scores": np.round(self.scores.double().numpy(), 6).tolist(),
            "ranking": [f"{layer}.{head}" for layer, head in self.ranked()],
            "threshold": threshold,
            "circuit": [f"{layer}.{head}" for layer, head in self.circuit(threshold)],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "info": self.info,
        }


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to `seconds[key]` (a method's per-step timings)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
