"""Head outputs on tiny GPT-2, Pythia and Llama models, checked against the model itself."""

from __future__ import annotations

import pytest
import torch

from circuitlab.circuits.heads import head_outputs
from circuitlab.circuits.tokens import encode
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM
from circuitlab.core.sites import find_sites

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "Hi",
    "The war lasted from the year 1732 to the year 17",
]


def attention_block_outputs(lm: LoadedLM, reduction: str) -> torch.Tensor:
    """Each layer's attention output (what the block adds to the residual), reduced: [n, L, d]."""
    lay = find_sites(lm.model)
    enc = encode(lm.tokenizer, PROMPTS)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        lay.attentions[layer].register_forward_hook(
            lambda m, a, out, layer=layer: seen.__setitem__(layer, out[0].detach())
        )
        for layer in range(lay.n_layers)
    ]
    with torch.no_grad():
        lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    for h in handles:
        h.remove()
    out = []
    for layer in range(lay.n_layers):
        x = seen[layer]
        if reduction == "mean":
            m = enc.attention_mask[..., None].float()
            out.append((x * m).sum(1) / m.sum(1))
        else:
            out.append(x[torch.arange(len(PROMPTS)), enc.last_index])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("reduction", ["mean", "last"])
def test_head_outputs_sum_to_the_attention_output(tiny: LoadedLM, reduction: str) -> None:
    lay = find_sites(tiny.model)
    heads = head_outputs(tiny, PROMPTS, reduction=reduction, batch_size=2)
    assert heads.shape == (len(PROMPTS), lay.n_layers, lay.n_heads, lay.d_model)
    bias = torch.stack([lay.b_o(layer).detach() for layer in range(lay.n_layers)])
    expected = attention_block_outputs(tiny, reduction)
    torch.testing.assert_close(heads.sum(2) + bias, expected, atol=1e-4, rtol=1e-4)
    # heads are distinct contributions, not one output copied or split evenly
    assert not torch.allclose(heads[:, :, 0], heads[:, :, 1], atol=1e-3)


@pytest.mark.parametrize("reduction", ["mean", "last"])
def test_padding_does_not_leak(tiny: LoadedLM, reduction: str) -> None:
    together = head_outputs(tiny, PROMPTS, reduction=reduction, batch_size=3)
    for i, prompt in enumerate(PROMPTS):
        alone = head_outputs(tiny, [prompt], reduction=reduction)
        torch.testing.assert_close(together[i], alone[0], atol=1e-4, rtol=1e-4)


def test_mean_and_last_differ(tiny: LoadedLM) -> None:
    mean = head_outputs(tiny, PROMPTS[:1], reduction="mean")
    last = head_outputs(tiny, PROMPTS[:1], reduction="last")
    assert not torch.allclose(mean, last, atol=1e-3)


def test_grouped_query_heads_map_to_their_kv_group(tokenizer) -> None:
    from tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer)
    lay = find_sites(lm.model)
    assert (lay.n_heads, lay.n_kv_heads) == (6, 2)
    attn = lay.attentions[1]
    with torch.no_grad():
        attn.v_proj.weight[lay.head_dim : 2 * lay.head_dim] = 0  # value head 1 only
        if attn.v_proj.bias is not None:
            attn.v_proj.bias[lay.head_dim : 2 * lay.head_dim] = 0
    out = head_outputs(lm, PROMPTS, reduction="mean")[:, 1]  # layer 1: [n, 6, d]
    norms = out.norm(dim=-1).amin(0)
    # query heads 3, 4, 5 share value head 1 (6 // 2 = 3 per group); heads 0-2 use value head 0
    assert torch.all(norms[3:] < 1e-6)
    assert torch.all(norms[:3] > 1e-2)


def test_output_projection_weights_split_by_head(tiny: LoadedLM) -> None:
    lay = find_sites(tiny.model)
    proj = lay.out_projs[0]
    z = torch.randn(2, 5, lay.n_heads * lay.head_dim)

    per_head = torch.einsum(
        "bshk,hkd->bsd", z.view(2, 5, lay.n_heads, lay.head_dim), lay.w_o(0).detach()
    )
    with torch.no_grad():
        torch.testing.assert_close(
            per_head + lay.b_o(0), proj(z), atol=1e-4, rtol=1e-4
        )


def test_bad_reduction_is_a_clear_error(tiny: LoadedLM) -> None:
    with pytest.raises(CircuitlabError, match="unknown reduction"):
        head_outputs(tiny, PROMPTS, reduction="max")
