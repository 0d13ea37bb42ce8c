from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.data import DataConfig, generate_splits
from circuitlab.cot.tasks import get_task
from circuitlab.cot.train import TrainConfig, prepare


@pytest.mark.parametrize(("task", "size"), [("arithmetic", 3), ("equation", 2), ("lis", 8),
                                            ("ed", 5)])  # fmt: skip
def test_corrupted_chains_have_one_wrong_step_and_the_test_split_stays_clean(task, size):
    config = DataConfig(task, size, "cot", num=400, test_num=40, seed=3, corrupt_rate=0.25)
    noisy = generate_splits(config)
    clean = generate_splits(dataclasses.replace(config, corrupt_rate=0.0))
    t, arg = get_task(task), config.task_arg
    for field in ("question", "answer"):
        assert (getattr(noisy.train, field) == getattr(clean.train, field)).all()
    for field in ("question", "steps", "answer"):
        assert (getattr(noisy.test, field) == getattr(clean.test, field)).all()
    changed = (noisy.train.steps != clean.train.steps).any(axis=2)  # [rows, steps]
    assert (changed.sum(axis=1) <= 1).all()  # at most one step per chain
    rows = np.flatnonzero(changed.any(axis=1))
    assert 50 < len(rows) < 150  # about a quarter of 400
    for e, was_changed in zip(t.to_examples(noisy.train, size, arg), changed.any(axis=1),
                              strict=True):  # fmt: skip
        assert t.verify(e.question, e.chain, e.answer, arg).valid != was_changed


def test_corrupt_rate_reaches_training_and_the_stats(tmp_path):
    clean = TrainConfig(task="lis", size=6, num=300, test_num=20, seed=1)
    noisy = dataclasses.replace(clean, corrupt_rate=0.5)
    a, b = prepare(clean), prepare(noisy)
    assert (a.test.ids == b.test.ids).all() and not (a.train.ids == b.train.ids).all()
    out = tmp_path / "l6.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "circuitlab", "cot", "data", "--task", "lis", "--size", "6",
         "--num", "200", "--format", "both", "--corrupt-rate", "0.3", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "l6.cot.stats.json").read_text())
    assert stats["corrupt_rate"] == 0.3 and 30 < stats["corrupted_chains"] < 90
    assert json.loads((tmp_path / "l6.direct.stats.json").read_text())["corrupted_chains"] == 0
    with pytest.raises(CircuitlabError, match="--format cot or both"):
        DataConfig("lis", 6, "direct", corrupt_rate=0.1)
    with pytest.raises(CircuitlabError, match=r"in \[0, 1\]"):
        DataConfig("lis", 6, "cot", corrupt_rate=1.5)


def test_fresh_test_problems_are_never_corrupted() -> None:
    from circuitlab.cot.train import fresh_test

    clean = TrainConfig(task="lis", size=6, num=100, test_num=10, seed=2)
    noisy = dataclasses.replace(clean, corrupt_rate=0.5)
    assert (fresh_test(clean, 50).ids == fresh_test(noisy, 50).ids).all()
