import platform
import random
import sys

import numpy as np
import pytest
import torch

from circuitlab.core.devices import pick_device, reuse_freed_memory
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.seeding import seed_everything


def test_seeding_makes_every_generator_repeat():
    def draw():
        rng = seed_everything(3)
        return random.random(), np.random.rand(), torch.rand(1).item(), rng.random()

    assert draw() == draw()


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(CircuitlabError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CircuitlabError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_glibc_keeps_freed_blocks_unless_the_user_tuned_malloc(monkeypatch):
    assert reuse_freed_memory() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert reuse_freed_memory.__wrapped__() is False  # the user's own setting wins
