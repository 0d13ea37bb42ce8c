"""Where the attention heads of a Hugging Face causal LM live, for any of the common layouts.

Every head-level operation here (outputs, ablations, patching) works at one place: the input of
the attention output projection (`c_proj` in GPT-2, `dense` in GPT-NeoX/Pythia, `o_proj` in
Llama-family models). There the activations are `z` of shape [batch, seq, n_heads * head_dim],
one slice per *query* head, already mixed over positions by the attention pattern and already
mapped to their key/value group under grouped-query attention. Head h writes
`z_h @ W_O[h]` into the residual stream and the projection adds one shared bias. Working at
this seam needs no knowledge of how q, k and v are computed (fused Conv1D qkv, rotary
embeddings, GQA), so one code path serves GPT-2, Pythia and SmolLM2 alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitlab.core.errors import CircuitlabError

# (attention module, output projection) attribute names inside one decoder layer
_OUT_PROJECTIONS = (
    ("self_attn", "o_proj"),  # Llama, Mistral, Qwen2, SmolLM2, ...
    ("attn", "c_proj"),  # GPT-2 (Conv1D: weight stored [in, out])
    ("attention", "dense"),  # GPT-NeoX / Pythia
    ("attn", "out_proj"),  # GPT-J, GPT-Neo style
    ("self_attn", "out_proj"),  # OPT style
)
_LAYER_LISTS = ("layers", "h", "blocks")


@dataclass(frozen=True)
class Layout:
    """Head geometry of a model plus the path to its layers; derived once per model."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    base_attr: str  # the decoder stack inside the LM (`model`, `transformer`, `gpt_neox`)
    layers_attr: str  # its list of layers (`layers`, `h`)
    attn_attr: str  # the attention module inside one layer
    proj_attr: str  # the output projection inside the attention module

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def head_name(self, layer: int, head: int) -> str:
        return f"{layer}.{head}"


def layout(model: nn.Module) -> Layout:
    """Find the decoder layers and attention output projections of `model`."""
    config = model.config
    base_attr = getattr(model, "base_model_prefix", "") or "model"
    base = getattr(model, base_attr, None)
    if base is None:
        raise CircuitlabError(f"{type(model).__name__} has no decoder stack `{base_attr}`")
    layers_attr = next(
        (a for a in _LAYER_LISTS if isinstance(getattr(base, a, None), nn.ModuleList)), None
    )
    if layers_attr is None:
        raise CircuitlabError(
            f"cannot find the decoder layers of {type(model).__name__}: supported are GPT-2, "
            "GPT-NeoX/Pythia and Llama-family models"
        )
    first = getattr(base, layers_attr)[0]
    for attn_attr, proj_attr in _OUT_PROJECTIONS:
        proj = getattr(getattr(first, attn_attr, None), proj_attr, None)
        if isinstance(proj, nn.Module):
            break
    else:
        raise CircuitlabError(
            f"cannot find the attention output projection of {type(model).__name__}: supported "
            "are GPT-2 (attn.c_proj), GPT-NeoX (attention.dense) and Llama (self_attn.o_proj)"
        )
    n_heads = _config_value(config, "num_attention_heads", "n_head")
    d_model = _config_value(config, "hidden_size", "n_embd")
    head_dim = getattr(config, "head_dim", None) or d_model // n_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    in_features = _weight(proj).shape[0] if _is_conv1d(proj) else _weight(proj).shape[1]
    if in_features != n_heads * head_dim:
        raise CircuitlabError(
            f"output projection takes {in_features} inputs, not n_heads x head_dim = "
            f"{n_heads} x {head_dim}: unsupported attention layout"
        )
    return Layout(
        n_layers=len(getattr(base, layers_attr)),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        base_attr=base_attr,
        layers_attr=layers_attr,
        attn_attr=attn_attr,
        proj_attr=proj_attr,
    )


def layers(model: nn.Module, lay: Layout) -> nn.ModuleList:
    return getattr(getattr(model, lay.base_attr), lay.layers_attr)


def attention(model: nn.Module, lay: Layout, layer: int) -> nn.Module:
    return getattr(layers(model, lay)[layer], lay.attn_attr)


def out_proj(model: nn.Module, lay: Layout, layer: int) -> nn.Module:
    return getattr(attention(model, lay, layer), lay.proj_attr)


def w_o(model: nn.Module, lay: Layout, layer: int) -> torch.Tensor:
    """W_O of one layer split by head: [n_heads, head_dim, d_model] (z_h @ W_O[h] is head h)."""
    proj = out_proj(model, lay, layer)
    weight = _weight(proj)
    w = weight if _is_conv1d(proj) else weight.T  # [in = n_heads * head_dim, d_model]
    return w.reshape(lay.n_heads, lay.head_dim, lay.d_model)


def b_o(model: nn.Module, lay: Layout, layer: int) -> torch.Tensor:
    """The output projection's bias (zeros where there is none): [d_model]."""
    proj = out_proj(model, lay, layer)
    bias = getattr(proj, "bias", None)
    if bias is None:
        return torch.zeros(lay.d_model, dtype=_weight(proj).dtype, device=_weight(proj).device)
    return bias


def _config_value(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise CircuitlabError(f"model config has none of {', '.join(names)}")


def _weight(proj: nn.Module) -> torch.Tensor:
    return proj.weight  # type: ignore[return-value]


def _is_conv1d(proj: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as [in, out], the transpose of nn.Linear."""
    return type(proj).__name__ == "Conv1D"
