"""Sites of tiny random-init GPT-2, Pythia (GPT-NeoX) and Llama-family (grouped-query) models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny import ARCHS, LLAMA_FAMILY, tiny_model

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.sites import (
    EMBED,
    FINAL_NORM,
    HEAD,
    Site,
    attn_z,
    find_sites,
    from_layer,
    hooked,
    layer_input,
    mlp_out,
)

VOCAB = 97
BATCH, SEQ = 2, 7

# where each family keeps its parts: (stack, layer list, attention, output projection, norm)
PATHS = {
    "gpt2": ("transformer", "h", "attn", "c_proj", "ln_f"),
    "pythia": ("gpt_neox", "layers", "attention", "dense", "final_layer_norm"),
    "llama": ("model", "layers", "self_attn", "o_proj", "norm"),
}
# (n_heads, n_kv_heads, head_dim, d_model) as tests/tiny.py builds them
SHAPES = {"gpt2": (4, 4, 8, 32), "pythia": (4, 4, 8, 32), "llama": (6, 2, 8, 48)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, tiny_model(request.param, VOCAB)


def ids(seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, seq), generator=torch.Generator().manual_seed(0))


def logits(model: Any, seq: int = SEQ, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids(seq), use_cache=False, **kwargs).logits


def no_hooks_left(model: Any) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_every_site_is_found_with_the_shape_facts(arch_model) -> None:
    arch, model = arch_model
    stack_attr, list_attr, attn_attr, proj_attr, norm_attr = PATHS[arch]
    stack = getattr(model, stack_attr)
    sites = find_sites(model)
    assert sites.layers is getattr(stack, list_attr)
    assert sites.n_layers == 3 == len(sites.layers)
    assert (sites.n_heads, sites.n_kv_heads, sites.head_dim, sites.d_model) == SHAPES[arch]
    for i, layer in enumerate(sites.layers):
        assert sites.attentions[i] is getattr(layer, attn_attr)
        assert sites.module(attn_z(i)) is getattr(getattr(layer, attn_attr), proj_attr)
        assert sites.module(mlp_out(i)) is layer.mlp
        assert sites.module(layer_input(i)) is layer
    assert sites.module(EMBED) is model.get_input_embeddings()
    assert sites.module(FINAL_NORM) is getattr(stack, norm_attr)
    assert sites.module(HEAD) is model.get_output_embeddings()
    assert len(sites.all_sites()) == 1 + 3 * sites.n_layers + 2


def test_hooks_see_every_site_with_its_shape(arch_model) -> None:
    arch, model = arch_model
    sites = find_sites(model)
    seen: dict[Site, torch.Tensor] = {}

    def keep(site: Site) -> Any:
        return lambda value: seen.__setitem__(site, value)

    with hooked(sites, {site: keep(site) for site in sites.all_sites()}):
        out = logits(model, logits_to_keep=1)
    d, z = sites.d_model, sites.n_heads * sites.head_dim
    special = {"attn_z": (BATCH, SEQ, z), "head": (BATCH, 1, d)}
    for site in sites.all_sites():
        expected = special.get(site.kind, (BATCH, SEQ, d))
        assert seen[site].shape == expected, site
    if arch == "llama":  # grouped-query: z has a slice per query head, more than k/v heads
        assert sites.n_kv_heads < sites.n_heads
    # the head's input is the final norm's output at the kept position, and gives the logits
    torch.testing.assert_close(seen[HEAD], seen[FINAL_NORM][:, -1:])
    torch.testing.assert_close(sites.head(seen[HEAD]), out)
    assert no_hooks_left(model)


def test_a_replacing_hook_changes_the_output_and_an_identity_one_does_not(arch_model) -> None:
    _, model = arch_model
    sites = find_sites(model)
    clean = logits(model)
    with hooked(sites, {attn_z(1): lambda z: z.clone()}):
        torch.testing.assert_close(logits(model), clean, atol=0, rtol=0)
    with hooked(sites, {attn_z(1): torch.zeros_like}):
        assert (logits(model) - clean).abs().max() > 1e-2
    with hooked(sites, {mlp_out(0): lambda m: 2 * m}):
        assert (logits(model) - clean).abs().max() > 1e-2
    # nothing reaches the (bias-free) head once the final norm's output is zeroed
    with hooked(sites, {FINAL_NORM: torch.zeros_like}):
        assert logits(model).abs().max() == 0
    torch.testing.assert_close(logits(model), clean, atol=0, rtol=0)


def test_hooks_are_removed_after_the_block_even_on_an_exception(arch_model) -> None:
    _, model = arch_model
    sites = find_sites(model)
    clean = logits(model)
    with pytest.raises(RuntimeError, match="boom"), hooked(sites, {EMBED: torch.zeros_like}):
        assert no_hooks_left(model) is False
        raise RuntimeError("boom")
    assert no_hooks_left(model)
    torch.testing.assert_close(logits(model), clean, atol=0, rtol=0)


def test_running_from_a_layer_on_its_recorded_input_gives_the_full_pass(arch_model) -> None:
    _, model = arch_model
    sites = find_sites(model)
    recorded: dict[int, torch.Tensor] = {}
    with hooked(sites, {layer_input(2): lambda h: recorded.__setitem__(2, h.clone())}):
        clean = logits(model)
    before = list(sites.layers)
    ran: list[int] = []
    counting = {layer_input(i): (lambda h, i=i: ran.append(i)) for i in range(sites.n_layers)}
    with hooked(sites, counting), from_layer(sites, 2, recorded[2]):
        skipped = logits(model)
    assert ran == [2]  # layers 0 and 1 never ran
    torch.testing.assert_close(skipped, clean, atol=1e-5, rtol=0)
    with from_layer(sites, 2, torch.zeros_like(recorded[2])):
        assert (logits(model) - clean).abs().max() > 1e-2  # the fed state is what counts
    with pytest.raises(RuntimeError), from_layer(sites, 1, recorded[2]):
        raise RuntimeError
    assert list(sites.layers) == before and no_hooks_left(model)


@pytest.mark.parametrize("kind", sorted(LLAMA_FAMILY))
def test_the_llama_family_has_its_sites_and_grouped_query_shapes(kind: str) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LLAMA_FAMILY[kind]()).eval()
    sites = find_sites(model)
    assert sites.model_type == kind
    assert (sites.n_layers, sites.n_heads, sites.n_kv_heads, sites.head_dim) == (4, 4, 2, 8)
    assert set(sites.all_sites()) == {
        EMBED, FINAL_NORM, HEAD,
        *(f(i) for i in range(4) for f in (layer_input, attn_z, mlp_out)),
    }  # fmt: skip
    seen: list[torch.Tensor] = []
    with hooked(sites, {attn_z(3): seen.append}):
        logits(model)
    assert seen[0].shape == (BATCH, SEQ, 4 * 8)


def test_skipped_layers_keep_their_indices_for_per_layer_attention_settings() -> None:
    """Qwen2 picks each layer's mask by its index: layer 3 slides over 6 tokens, 0-2 do not.
    Running layer 3 as if it were the first of a shorter list would give it a full mask."""
    from transformers import AutoModelForCausalLM

    config = LLAMA_FAMILY["qwen2"]()
    assert config.layer_types[3] != config.layer_types[2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    sites = find_sites(model)
    recorded: list[torch.Tensor] = []
    with hooked(sites, {layer_input(3): recorded.append}):
        clean = logits(model, seq=16)  # longer than the window
    with from_layer(sites, 3, recorded[0]):
        torch.testing.assert_close(logits(model, seq=16), clean, atol=1e-5, rtol=0)


def test_a_peft_model_is_found_through_its_wrapper() -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", VOCAB)
    base_layers = model.model.layers
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert find_sites(wrapped).layers is base_layers


def test_unknown_layouts_and_sites_are_clear_errors(arch_model) -> None:
    _, model = arch_model
    sites = find_sites(model)
    with pytest.raises(CircuitlabError, match="does not exist"):
        sites.module(layer_input(sites.n_layers))
    with pytest.raises(CircuitlabError, match="unknown site"):
        Site("residual")
    with pytest.raises(CircuitlabError, match="takes a layer"):
        Site("layer")
    with pytest.raises(CircuitlabError, match="takes a layer"):
        Site("embed", 0)
    not_an_lm = torch.nn.Linear(2, 2)
    not_an_lm.config = model.config  # type: ignore[assignment]
    with pytest.raises(CircuitlabError, match="decoder stack"):
        find_sites(not_an_lm)
