"""Length-bucketed batches whose order is a pure function of (seed, epoch).

Padding every batch to a global maximum length (as the official code does) wastes most of
the compute on LIS/ED chains whose lengths vary a lot. Here each epoch shuffles the data,
cuts it into pools of `pool` batches, sorts each pool by length and slices it into
batches, then shuffles the batch order: batches hold sequences of similar length, yet the
order stays random. Because the plan depends only on (seed, epoch), a resumed run can
rebuild it and skip the batches it already trained on, and each data-parallel rank can take
its own share without any communication.
"""

from __future__ import annotations

import numpy as np


def epoch_plan(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    pool: int = 64,
    by_length: bool = True,
) -> list[np.ndarray]:
    """Index arrays of the batches of one epoch (the last batch of a pool may be short).

    `by_length=False` is the official order: the shuffled data cut into batches as it comes.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    span = batch_size * pool
    batches: list[np.ndarray] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def shard(plan: list[np.ndarray], rank: int, world: int) -> list[np.ndarray]:
    """This rank's batches: every world-th, truncated so all ranks take the same number."""
    usable = len(plan) - len(plan) % world if len(plan) >= world else len(plan)
    return plan[rank:usable:world]


def padding_fraction(lengths: np.ndarray, plan: list[np.ndarray]) -> float:
    """Share of token slots that are padding under `plan` (0 = no waste)."""
    used = sum(int(lengths[b].sum()) for b in plan)
    slots = sum(int(lengths[b].max()) * len(b) for b in plan)
    return 1.0 - used / slots if slots else 0.0
