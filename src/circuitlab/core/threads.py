"""torch's CPU thread count, set for a block of work and put back afterwards.

`torch.set_num_threads` is process-wide: a library call or a test that changes it and does
not restore it slows (or oversubscribes) everything that runs after it in the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` CPU threads inside the block (0: leave the count as it is); the previous
    count is restored on exit, also when the block raises."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
