from __future__ import annotations

import numpy as np

from circuitlab.cot.batching import epoch_plan, padding_fraction, shard


def test_plan_covers_every_example_once_and_is_reproducible() -> None:
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    plan = epoch_plan(lengths, batch_size=32, seed=1, epoch=3)
    assert sorted(np.concatenate(plan).tolist()) == list(range(1000))
    again = epoch_plan(lengths, batch_size=32, seed=1, epoch=3)
    assert all((a == b).all() for a, b in zip(plan, again, strict=True))
    other = epoch_plan(lengths, batch_size=32, seed=1, epoch=4)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(plan, other, strict=False))


def test_bucketing_wastes_far_less_than_a_global_maxlen() -> None:
    lengths = np.random.default_rng(0).integers(20, 210, size=4096)
    plan = epoch_plan(lengths, batch_size=64, seed=0, epoch=0)
    bucketed = padding_fraction(lengths, plan)
    global_pad = 1 - lengths.sum() / (lengths.max() * len(lengths))
    assert bucketed < 0.05 < 0.4 < global_pad


def test_shards_are_disjoint_and_equal_sized() -> None:
    plan = [np.array([i]) for i in range(11)]
    parts = [shard(plan, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    flat = [int(b[0]) for p in parts for b in p]
    assert len(set(flat)) == 9


def test_shuffle_batching_mixes_lengths_as_the_official_loader() -> None:
    """by_length=False: consecutive slices of one permutation, whatever the lengths."""
    lengths = np.repeat([10, 50], 500)
    plan = epoch_plan(lengths, batch_size=100, seed=1, epoch=0, by_length=False)
    order = np.random.default_rng([1, 0]).permutation(1000)
    assert all((b == order[i * 100 : (i + 1) * 100]).all() for i, b in enumerate(plan))
    assert all(len(set(lengths[b].tolist())) == 2 for b in plan)  # sizes mixed in a batch
    bucketed = epoch_plan(lengths, batch_size=100, seed=1, epoch=0)
    assert sum(len(set(lengths[b].tolist())) == 1 for b in bucketed) >= len(bucketed) - 2
