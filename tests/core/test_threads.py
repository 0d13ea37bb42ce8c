from __future__ import annotations

import pytest
import torch

from circuitlab.core.threads import torch_threads


def test_sets_the_count_inside_and_restores_it_after() -> None:
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_restores_the_count_when_the_block_raises() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_zero_leaves_the_count_alone_and_still_restores_changes_made_inside() -> None:
    before = torch.get_num_threads()
    with torch_threads(0):
        assert torch.get_num_threads() == before
        torch.set_num_threads(before + 2)
    assert torch.get_num_threads() == before
