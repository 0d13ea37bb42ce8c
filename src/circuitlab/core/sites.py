"""The named places inside a Hugging Face causal LM, and the one way this project hooks them.

Both systems reach inside pretrained models: `circuits` reads and overwrites per-head
attention outputs and reruns the top of the stack from a cached residual stream; `analog`
records what enters a decoder layer and what the LM head is fed, to get its reference model
cheaply. The module paths differ by family, so they are found here once, by structure:

| site        | GPT-2              | GPT-NeoX / Pythia          | Llama, Mistral, Qwen2/3  |
| ----------- | ------------------ | -------------------------- | ------------------------ |
| embed       | transformer.wte    | gpt_neox.embed_in          | model.embed_tokens       |
| layer i in  | transformer.h[i]   | gpt_neox.layers[i]         | model.layers[i]          |
| attn_z i in | h[i].attn.c_proj   | layers[i].attention.dense  | layers[i].self_attn.o_proj |
| mlp i out   | h[i].mlp           | layers[i].mlp              | layers[i].mlp            |
| final_norm  | transformer.ln_f   | gpt_neox.final_layer_norm  | model.norm               |
| head in     | lm_head            | embed_out                  | lm_head                  |

`attn_z` is the input of the attention output projection: [batch, seq, n_heads * head_dim],
one slice per *query* head, already mixed over positions and already mapped to its key/value
group under grouped-query attention. Head h writes `z_h @ W_O[h]` into the residual stream
and the projection adds one shared bias, so per-head work needs no knowledge of how q, k and
v are computed (fused Conv1D qkv, rotary embeddings, GQA). The head's site is its *input*
(after `logits_to_keep` slicing), the final norm's its output over every position.

Hooks are plain torch forward hooks (output sites) and forward pre-hooks (input sites),
always removed when the `with` block ends, also on errors, so a model is never left modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitlab.core.errors import CircuitlabError

# (attention module, output projection) attribute names inside one decoder layer
_OUT_PROJECTIONS = (
    ("self_attn", "o_proj"),  # Llama, Mistral, Qwen2, Qwen3, SmolLM2, ...
    ("attn", "c_proj"),  # GPT-2 (Conv1D: weight stored [in, out])
    ("attention", "dense"),  # GPT-NeoX / Pythia
    ("attn", "out_proj"),  # GPT-J, GPT-Neo style
    ("self_attn", "out_proj"),  # OPT style
)
_LAYER_LISTS = ("layers", "h", "blocks")
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
_MLPS = ("mlp", "feed_forward")

# where a site's value is: the input of its module (pre-hook) or its output (forward hook)
_INPUT_KINDS = frozenset({"layer", "attn_z", "head"})
KINDS = ("embed", "layer", "attn_z", "mlp", "final_norm", "head")
_PER_LAYER = frozenset({"layer", "attn_z", "mlp"})


@dataclass(frozen=True)
class Site:
    """One hookable place: a kind (see KINDS) and, for per-layer kinds, the layer."""

    kind: str
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CircuitlabError(f"unknown site {self.kind!r}: use one of {', '.join(KINDS)}")
        if (self.layer is None) == (self.kind in _PER_LAYER):
            raise CircuitlabError(f"site {self.kind!r} takes a layer iff it is per layer")

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"


EMBED = Site("embed")
FINAL_NORM = Site("final_norm")
HEAD = Site("head")


def layer_input(layer: int) -> Site:
    """The residual stream entering decoder layer `layer`: [batch, seq, d_model]."""
    return Site("layer", layer)


def attn_z(layer: int) -> Site:
    """The attention output projection's input: [batch, seq, n_heads * head_dim]."""
    return Site("attn_z", layer)


def mlp_out(layer: int) -> Site:
    """What the MLP of decoder layer `layer` returns: [batch, seq, d_model]."""
    return Site("mlp", layer)


@dataclass(frozen=True, eq=False)
class Sites:
    """The modules behind every site of one model, and the shape facts callers need.

    Found fresh by `find_sites` (cheap): it holds the modules themselves, so it goes stale if
    the model's modules are replaced (e.g. wrapped by peft after it was found).
    """

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    embed: nn.Module
    layers: nn.ModuleList
    attentions: tuple[nn.Module, ...]
    out_projs: tuple[nn.Module, ...]
    mlps: tuple[nn.Module | None, ...]  # None where a layer has no separate MLP module
    final_norm: nn.Module | None
    head: nn.Module | None

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def module(self, site: Site) -> nn.Module:
        """The module whose input (layer, attn_z, head) or output (the rest) `site` is."""
        layer = site.layer if site.layer is not None else 0
        if site.layer is not None and not 0 <= layer < self.n_layers:
            raise CircuitlabError(
                f"site {site} does not exist: the model has {self.n_layers} layers"
            )
        found = {
            "embed": lambda: self.embed,
            "layer": lambda: self.layers[layer],
            "attn_z": lambda: self.out_projs[layer],
            "mlp": lambda: self.mlps[layer],
            "final_norm": lambda: self.final_norm,
            "head": lambda: self.head,
        }[site.kind]()
        if found is None:
            raise CircuitlabError(f"this {self.model_type} model has no module for site {site}")
        return found

    def all_sites(self) -> list[Site]:
        """Every site this model has, bottom to top."""
        out = [EMBED]
        for i in range(self.n_layers):
            out += [layer_input(i), attn_z(i)]
            if self.mlps[i] is not None:
                out.append(mlp_out(i))
        out += [s for s, m in ((FINAL_NORM, self.final_norm), (HEAD, self.head)) if m is not None]
        return out

    def split_heads(self, z: torch.Tensor) -> torch.Tensor:
        """[..., n_heads * head_dim] -> [..., n_heads, head_dim] (a view)."""
        return z.view(*z.shape[:-1], self.n_heads, self.head_dim)

    def w_o(self, layer: int) -> torch.Tensor:
        """W_O of one layer split by head: [n_heads, head_dim, d_model] (z_h @ W_O[h] is head h)."""
        proj = self.out_projs[layer]
        weight = _weight(proj)
        w = weight if _is_conv1d(proj) else weight.T  # [in = n_heads * head_dim, d_model]
        return w.reshape(self.n_heads, self.head_dim, self.d_model)

    def b_o(self, layer: int) -> torch.Tensor:
        """The output projection's bias (zeros where there is none): [d_model]."""
        proj = self.out_projs[layer]
        bias = getattr(proj, "bias", None)
        if bias is None:
            weight = _weight(proj)
            return torch.zeros(self.d_model, dtype=weight.dtype, device=weight.device)
        return bias


def unwrapped(model: Any) -> Any:
    """The Hugging Face model inside a peft wrapper (the model itself otherwise)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def find_sites(model: Any) -> Sites:
    """Find the sites of a HF causal LM (or a peft model around one); a clear error if the
    layout is not one this knows."""
    model = unwrapped(model)
    name = type(model).__name__
    config = model.config
    base_attr = getattr(model, "base_model_prefix", "") or "model"
    base = getattr(model, base_attr, None)
    if base is None:
        raise CircuitlabError(f"{name} has no decoder stack `{base_attr}`")
    layers = _first(base, _LAYER_LISTS, nn.ModuleList)
    if layers is None or len(layers) == 0:
        raise CircuitlabError(
            f"cannot find the decoder layers of {name}: supported are GPT-2, "
            "GPT-NeoX/Pythia and Llama-family models"
        )
    for attn_attr, proj_attr in _OUT_PROJECTIONS:
        if isinstance(getattr(getattr(layers[0], attn_attr, None), proj_attr, None), nn.Module):
            break
    else:
        raise CircuitlabError(
            f"cannot find the attention output projection of {name}: supported "
            "are GPT-2 (attn.c_proj), GPT-NeoX (attention.dense) and Llama (self_attn.o_proj)"
        )
    attentions = tuple(getattr(layer, attn_attr) for layer in layers)
    out_projs = tuple(getattr(a, proj_attr) for a in attentions)
    n_heads = _config_value(config, "num_attention_heads", "n_head")
    d_model = _config_value(config, "hidden_size", "n_embd")
    head_dim = getattr(config, "head_dim", None) or d_model // n_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    proj = out_projs[0]
    in_features = _weight(proj).shape[0] if _is_conv1d(proj) else _weight(proj).shape[1]
    if in_features != n_heads * head_dim:
        raise CircuitlabError(
            f"output projection takes {in_features} inputs, not n_heads x head_dim = "
            f"{n_heads} x {head_dim}: unsupported attention layout"
        )
    return Sites(
        model_type=str(getattr(config, "model_type", name)),
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        embed=model.get_input_embeddings(),
        layers=layers,
        attentions=attentions,
        out_projs=out_projs,
        mlps=tuple(_first(layer, _MLPS, nn.Module) for layer in layers),
        final_norm=_first(base, _FINAL_NORMS, nn.Module),
        head=model.get_output_embeddings(),
    )


# A hook gets a site's value; returning a tensor replaces the value, returning None keeps it.
Hook = Callable[[torch.Tensor], torch.Tensor | None]


def _pre_hook(hook: Hook) -> Callable[..., Any]:
    def run(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            new = hook(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        new = hook(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return run


def _forward_hook(hook: Hook) -> Callable[..., Any]:
    def run(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        value = output[0] if isinstance(output, tuple) else output
        new = hook(value)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return run


@contextmanager
def hooked(sites: Sites, hooks: Mapping[Site, Hook]) -> Iterator[None]:
    """Run `hooks` (site -> hook) on every forward pass of the model inside the block."""
    with ExitStack() as stack:
        for site, hook in hooks.items():
            module = sites.module(site)
            if site.kind in _INPUT_KINDS:
                handle = module.register_forward_pre_hook(_pre_hook(hook), with_kwargs=True)
            else:
                handle = module.register_forward_hook(_forward_hook(hook))
            stack.callback(handle.remove)
        yield


class _Skipped(nn.Module):
    """Stands in for a decoder layer below the start: returns its input, computes nothing."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else kwargs.get("hidden_states")


@contextmanager
def from_layer(sites: Sites, start: int, hidden: torch.Tensor) -> Iterator[None]:
    """Forward passes inside run only layers `start`.., with `hidden` entering layer `start`.

    Layers below are replaced by pass-throughs for the duration (the list keeps its length,
    so per-index layer settings such as Qwen2's sliding-window layers stay aligned); the
    embeddings, masks and rotary tables are still computed by the model itself (cheap) for
    the batch it is called on, which must match `hidden`'s batch. Whatever the pass-throughs
    hand up is overwritten at layer `start`, so their output format never matters.
    """
    originals = [sites.layers[i] for i in range(start)]
    skipped = _Skipped()
    try:
        for i in range(start):
            sites.layers[i] = skipped
        with hooked(sites, {layer_input(start): lambda _: hidden}):
            yield
    finally:
        for i, layer in enumerate(originals):
            sites.layers[i] = layer


def _first(owner: Any, names: tuple[str, ...], kind: type[nn.Module]) -> Any:
    """The first of `owner`'s attributes `names` that is a `kind` module, or None."""
    return next((m for a in names if isinstance(m := getattr(owner, a, None), kind)), None)


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
