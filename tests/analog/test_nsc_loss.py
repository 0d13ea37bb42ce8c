"""The chunked CE + KL loss against the unchunked one it replaces: values, gradients, and
that no [tokens, vocab] tensor is ever made."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from circuitlab.analog import nsc_loss

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, VOCAB, D = 23, 50, 6


def problem(seed: int, dtype: torch.dtype = torch.float64):
    """Hidden states, a head with a bias, targets and CE / KL masks that differ (a row in
    CE only, rows in KL only, most in both): the shapes the training step hands over."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, D, generator=g, dtype=dtype, requires_grad=True)
    weight = (torch.randn(VOCAB, D, generator=g, dtype=dtype) * 2).requires_grad_(True)
    bias = torch.randn(VOCAB, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, VOCAB, (ROWS,), generator=g)
    ce = torch.rand(ROWS, generator=g) < 0.7
    kl = torch.rand(ROWS, generator=g) < 0.7
    kl[0], ce[0] = False, True  # a row in CE only
    ce[1], kl[1] = False, True  # a row in KL only
    return hidden, weight, bias, targets, ce, kl


def head_reference(seed: int, rows: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed + 100)
    return nsc_loss.HeadReference(
        torch.randn(rows, D, generator=g, dtype=dtype),
        torch.randn(VOCAB, D, generator=g, dtype=dtype) * 2,
        torch.randn(VOCAB, generator=g, dtype=dtype),
    )


def unchunked(hidden, weight, bias, targets, ce, kl, reference, direction):
    """The old path: full log-probs, then nsc_loss's ce_sum and token_kl / bucket_kl."""
    logp = torch.log_softmax(F.linear(hidden, weight, bias), dim=-1)
    ce_part = nsc_loss.ce_sum(logp[ce], targets[ce])
    if reference is None:
        return ce_part, torch.zeros((), dtype=logp.dtype)
    if isinstance(reference, nsc_loss.TopKReference):
        terms = nsc_loss.bucket_kl(
            logp[kl], reference.ids, reference.values, reference.tail, direction
        )
    else:
        ref = torch.log_softmax(F.linear(reference.hidden, reference.weight, reference.bias), -1)
        terms = nsc_loss.token_kl(logp[kl], ref, direction)
    return ce_part, terms.sum()


def both_ways(kind: str, direction: str, chunk: int, seed: int = 0, lam: float = 0.3):
    hidden, weight, bias, targets, ce, kl = problem(seed)
    n_kl = int(kl.sum())
    reference = None
    if kind == "head":
        reference = head_reference(seed, n_kl)
    elif kind == "top_k":
        ref_logp = torch.log_softmax(head_reference(seed, n_kl).logp() * 1.5, dim=-1)
        reference = nsc_loss.TopKReference(*nsc_loss.top_k_reference(ref_logp, 7))
    results = []
    for run in (unchunked, None):
        args = (hidden, weight, bias, targets, ce, kl, reference, direction)
        if run is None:
            ce_sum, kl_sum = nsc_loss.chunked_ce_kl(*args, chunk_tokens=chunk)
        else:
            ce_sum, kl_sum = run(*args)
        grads = torch.autograd.grad(ce_sum + lam * kl_sum, (hidden, weight, bias))
        results.append((ce_sum.detach(), kl_sum.detach(), grads))
    return results


@pytest.mark.parametrize("kind", ["none", "head", "top_k"])
@pytest.mark.parametrize("direction", nsc_loss.DIRECTIONS)
@pytest.mark.parametrize("chunk", [1, 4, 7, ROWS, ROWS + 5])
def test_chunked_loss_and_gradients_equal_the_unchunked(kind, direction, chunk):
    (ce_a, kl_a, grads_a), (ce_b, kl_b, grads_b) = both_ways(kind, direction, chunk)
    torch.testing.assert_close(ce_b, ce_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl_b, kl_a, rtol=1e-12, atol=1e-12)
    if kind != "none":
        assert kl_a > 0.1  # a KL that means something was compared
    for a, b in zip(grads_a, grads_b, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_chunked_loss_in_float32_matches_to_float32_rounding():
    hidden, weight, bias, targets, ce, kl = problem(3, torch.float32)
    reference = head_reference(3, int(kl.sum()), torch.float32)
    args = (hidden, weight, bias, targets, ce, kl, reference, "model||reference")
    ce_a, kl_a = unchunked(*args)
    ce_b, kl_b = nsc_loss.chunked_ce_kl(*args, chunk_tokens=5)
    torch.testing.assert_close(ce_b, ce_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl_b, kl_a, rtol=1e-5, atol=1e-5)
    grad_a = torch.autograd.grad(ce_a + kl_a, weight)[0]
    grad_b = torch.autograd.grad(ce_b + kl_b, weight)[0]
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", ["head", "top_k"])
def test_no_tensor_of_all_rows_by_the_vocabulary_is_made(kind):
    hidden, weight, bias, targets, ce, kl = problem(1)
    n_kl = int(kl.sum())
    reference = head_reference(1, n_kl)
    if kind == "top_k":
        reference = nsc_loss.TopKReference(*nsc_loss.top_k_reference(reference.logp(), 7))
    chunk = 8  # more than D: the head's gradient [V, d] is not the largest tensor
    args = (hidden, weight, bias, targets, ce, kl, reference, "model||reference")
    with LargestTensor() as chunked:
        ce_sum, kl_sum = nsc_loss.chunked_ce_kl(*args, chunk_tokens=chunk)
        (ce_sum + kl_sum).backward()
    with LargestTensor() as whole:
        ce_sum, kl_sum = unchunked(*args)
        (ce_sum + kl_sum).backward()
    assert whole.largest >= n_kl * VOCAB  # the old path holds [rows, vocab]
    assert chunked.largest <= chunk * VOCAB < n_kl * VOCAB  # the chunked one a chunk's


def test_no_rows_give_zero_sums_that_still_backpropagate():
    hidden = torch.zeros(0, D, requires_grad=True)
    weight = torch.randn(VOCAB, D, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.bool)
    ce_sum, kl_sum = nsc_loss.chunked_ce_kl(
        hidden, weight, None, torch.zeros(0, dtype=torch.long), empty, empty, None,
        "model||reference", 8,
    )  # fmt: skip
    (ce_sum + kl_sum).backward()
    assert float(ce_sum.detach()) == 0 and float(kl_sum.detach()) == 0
    assert weight.grad is not None and not weight.grad.any()


def test_a_reference_head_outside_autocast_keeps_float32():
    """The hidden-state cache's frozen head runs outside the training autocast (as its
    unchunked path does); the live reference's head inside it, as in its own forward."""
    reference = head_reference(0, 5, torch.float32)
    exact = torch.log_softmax(F.linear(reference.hidden, reference.weight, reference.bias), -1)
    outside = nsc_loss.HeadReference(
        reference.hidden, reference.weight, reference.bias, autocast=False
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(outside.logp(), exact, rtol=1e-6, atol=1e-6)
        assert (reference.logp() - exact).abs().max() > 1e-4  # bfloat16 matmul
