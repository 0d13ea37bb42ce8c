"""One call that seeds every random number generator a run touches."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and (if installed) torch; return a fresh NumPy generator.

    Code that needs randomness should prefer the returned generator (or its own seeded one)
    over global state, so that results do not depend on what ran before.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but seeding need not be
        pass
    else:
        torch.manual_seed(seed)
    return np.random.default_rng(seed)
