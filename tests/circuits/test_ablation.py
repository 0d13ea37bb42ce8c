"""Ablation hooks and the fast patching path, checked against weight surgery and full passes."""

from __future__ import annotations

import pytest
import torch

from circuitlab.circuits.ablation import ablate, ablated_logits, mean_z, position_z, zero_z
from circuitlab.circuits.metrics import metric_values, token_sets
from circuitlab.circuits.patching import ablated_metrics
from circuitlab.circuits.tasks import make_task
from circuitlab.circuits.tokens import encode, last_logits
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM
from circuitlab.core.sites import find_sites


@pytest.fixture(scope="module")
def task(tokenizer):
    return make_task("ioi", tokenizer, n=6, seed=3)


def surgery_logits(lm: LoadedLM, prompts, layer: int, head: int, value: torch.Tensor):
    """Ablation by editing weights: drop head's W_O rows, add value @ W_O[h] to the bias."""
    lay = find_sites(lm.model)
    proj = lay.out_projs[layer]
    w = lay.w_o(layer).detach().clone()
    weight, bias = proj.weight.detach().clone(), proj.bias.detach().clone()
    rows = slice(head * lay.head_dim, (head + 1) * lay.head_dim)
    with torch.no_grad():
        if type(proj).__name__ == "Conv1D":
            proj.weight[rows, :] = 0
        else:
            proj.weight[:, rows] = 0
        proj.bias += value @ w[head]
    try:
        return last_logits(lm.model, encode(lm.tokenizer, prompts))
    finally:
        with torch.no_grad():
            proj.weight.copy_(weight)
            proj.bias.copy_(bias)


def test_zero_and_mean_ablation_equal_weight_surgery(tiny: LoadedLM, task) -> None:
    lay = find_sites(tiny.model)
    if lay.out_projs[0].bias is None:
        pytest.skip("surgery needs a bias")
    clean = last_logits(tiny.model, encode(tiny.tokenizer, task.positives))
    means = mean_z(tiny, encode(tiny.tokenizer, task.negatives))
    for values in (zero_z(lay), means):
        layer, head = 1, 2
        hooked = ablated_logits(
            tiny,
            task.positives,
            [(layer, head)],
            kind="zero" if values is not means else "mean",
            reference=task.negatives,
        )
        expected = surgery_logits(tiny, task.positives, layer, head, values[layer, head])
        torch.testing.assert_close(hooked, expected, atol=1e-3, rtol=1e-4)
        assert (hooked - clean).abs().max() > 1e-2  # the ablation did something


def test_llama_zero_ablation_equals_zeroing_w_o(tokenizer, task) -> None:
    from tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer)
    lay = find_sites(lm.model)
    enc = encode(tokenizer, task.positives)
    with ablate(lm, [(0, 4)], zero_z(lay)):
        hooked = last_logits(lm.model, enc)
    proj = lay.out_projs[0]
    with torch.no_grad():
        proj.weight[:, 4 * lay.head_dim : 5 * lay.head_dim] = 0
    torch.testing.assert_close(hooked, last_logits(lm.model, enc), atol=1e-4, rtol=1e-4)


def test_resample_from_the_same_prompts_changes_nothing(tiny: LoadedLM, task) -> None:
    clean = last_logits(tiny.model, encode(tiny.tokenizer, task.positives))
    same = ablated_logits(
        tiny, task.positives, [(0, 0), (1, 3)], kind="resample", reference=task.positives
    )
    torch.testing.assert_close(same, clean, atol=1e-4, rtol=1e-4)
    other = ablated_logits(
        tiny, task.positives, [(0, 0), (1, 3)], kind="resample", reference=task.negatives
    )
    assert (other - clean).abs().max() > 1e-2


def test_resampling_every_head_of_a_layer_copies_the_corrupted_layer(tiny: LoadedLM, task) -> None:
    lay = find_sites(tiny.model)
    clean, corrupt = encode(tiny.tokenizer, task.positives), encode(tiny.tokenizer, task.negatives)
    values = position_z(tiny, corrupt)
    seen = {}
    proj = lay.out_projs[1]
    with ablate(tiny, [(1, h) for h in range(lay.n_heads)], values):
        # registered after the ablation hook, so it sees the edited z
        handle = proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0]))
        last_logits(tiny.model, clean)
    handle.remove()
    mask = clean.attention_mask.bool()
    expected = values[:, :, 1].flatten(2)
    torch.testing.assert_close(seen["z"][mask], expected[mask])


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_fast_patching_equals_one_full_pass_per_head(tiny: LoadedLM, task, kind: str) -> None:
    lay = find_sites(tiny.model)
    enc, neg = encode(tiny.tokenizer, task.positives), encode(tiny.tokenizer, task.negatives)
    sets = token_sets(task)
    means = mean_z(tiny, neg) if kind == "mean" else None
    before = list(lay.layers)
    fast = ablated_metrics(
        tiny, lay, enc, sets, task.metric, kind, mean=means, corrupted=neg, heads_per_pass=4
    )
    for layer in range(lay.n_layers):
        for head in range(lay.n_heads):
            slow = metric_values(
                ablated_logits(
                    tiny, task.positives, [(layer, head)], kind=kind, reference=task.negatives
                ),
                sets,
                task.metric,
            )
            torch.testing.assert_close(fast[:, layer, head], slow, atol=1e-4, rtol=1e-4)
    # the model's layers are back afterwards (patching skips the layers below the patched one)
    assert list(find_sites(tiny.model).layers) == before


def test_bad_heads_and_misaligned_pairs_are_clear_errors(tiny: LoadedLM, task) -> None:
    lay = find_sites(tiny.model)
    with (
        pytest.raises(CircuitlabError, match="does not exist"),
        ablate(tiny, [(lay.n_layers, 0)], zero_z(lay)),
    ):
        pass
    with pytest.raises(CircuitlabError, match="token count"):
        ablated_logits(tiny, ["a b c d"], [(0, 0)], kind="resample", reference=["a"])
    with pytest.raises(CircuitlabError, match="unknown ablation"):
        ablated_logits(tiny, ["a"], [(0, 0)], kind="noise", reference=["a"])
