from __future__ import annotations

import pytest
import torch

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.model import GPT, ModelConfig, greedy_generate


def tiny(positions: str = "sinusoidal") -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=13, max_len=24, layers=2, d_model=32, heads=4,
                         dropout=0.0, positions=positions)  # fmt: skip
    return GPT(config).eval()


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_model_is_causal(positions: str) -> None:
    model = tiny(positions)
    ids = torch.randint(2, 13, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = 2
    a, _ = model(ids)
    b, _ = model(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-5)


def test_cached_generation_matches_full_recompute() -> None:
    model = tiny()
    prompts = torch.randint(2, 13, (3, 5))
    fast = greedy_generate(model, prompts, max_new=10, eos_id=1)
    seq = prompts
    slow = []
    for _ in range(fast.shape[1]):
        logits, _ = model(seq)
        nxt = logits[:, -1].argmax(-1)
        slow.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    slow_t = torch.stack(slow, 1)
    for row in range(3):  # rows that hit eos are padded with eos by greedy_generate
        stop = (slow_t[row] == 1).nonzero()
        end = int(stop[0]) + 1 if len(stop) else slow_t.shape[1]
        assert fast[row, :end].tolist() == slow_t[row, :end].tolist()


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(CircuitlabError, match="divisible"):
        ModelConfig(vocab_size=10, max_len=10, d_model=30, heads=4)
    with pytest.raises(CircuitlabError, match="positions"):
        ModelConfig(vocab_size=10, max_len=10, positions="rotary")
    with pytest.raises(ValueError, match="max_len"):
        tiny()(torch.zeros((1, 30), dtype=torch.long))
