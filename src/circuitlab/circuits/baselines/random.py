"""A seeded random ranking of the heads: the floor every method must beat (AUC about 0.5)."""

from __future__ import annotations

import torch

from circuitlab.circuits.ranking import Ranking


def random_scores(n_layers: int, n_heads: int, seed: int) -> Ranking:
    gen = torch.Generator().manual_seed(seed)
    return Ranking("random", torch.rand(n_layers, n_heads, generator=gen), {"scoring": 0.0})
