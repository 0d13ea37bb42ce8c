from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.model import GPT, Dropout, ModelConfig, greedy_generate


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


def test_logits_from_skips_only_unlabelled_positions() -> None:
    """Training asks for logits from the first labelled position: same loss, same gradients."""
    ids = torch.randint(2, 13, (3, 12))
    labels = torch.randint(0, 13, (3, 12))
    labels[:, :5] = -100  # the question: no loss, as loss_labels marks it
    full, part = tiny().train(), tiny().train()  # dropout 0: both passes are deterministic
    logits_full, cache_full = full(ids)
    logits_part, cache_part = part(ids, logits_from=5)
    assert logits_part.shape == (3, 7, 13)
    assert torch.allclose(logits_part, logits_full[:, 5:], atol=1e-5)
    for (k1, v1), (k2, v2) in zip(cache_full, cache_part, strict=True):
        assert torch.allclose(k1, k2) and torch.allclose(v1, v2)
    F.cross_entropy(logits_full.flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
    F.cross_entropy(
        logits_part.flatten(0, 1), labels[:, 5:].flatten(), ignore_index=-100
    ).backward()
    for (name, a), b in zip(full.named_parameters(), part.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with pytest.raises(ValueError, match="logits_from"):
        full(ids, logits_from=12)


def test_written_out_attention_matches_fused() -> None:
    """Training with dropout on the CPU takes the written-out attention; it must be exact."""
    model = tiny()
    ids = torch.randint(2, 13, (2, 9))
    expected, _ = model(ids)
    for block in model.blocks:  # the written-out branch, with its dropout masks switched off
        block.attn.dropout = 0.1
    model.train()
    got, _ = model(ids)
    assert torch.allclose(got, expected, atol=1e-5)


def test_cpu_dropout_rate_scale_and_gradient() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.1)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * scale)/dx = scale, which equals y at x = 1
    assert torch.equal(drop.eval()(x), x)
    assert not torch.equal(Dropout(0.1)(x), Dropout(0.1)(x))  # fresh masks each call
