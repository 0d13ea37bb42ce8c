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


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "alibi"])
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


def official_tiny() -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=13, max_len=24, layers=2, d_model=32, heads=4,
                         dropout=0.0, arch="official")  # fmt: skip
    return GPT(config).eval()


def official_shapes(vocab: int, d: int, layers: int) -> dict[str, tuple[int, ...]]:
    """The parameters of the official model.py's GPT, written from its description."""
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.embedding.tok_embed.weight": (vocab, d),
        "transformer.embedding.norm.weight": (d,),
        "transformer.embedding.norm.bias": (d,),
        "transformer.ln_f.weight": (d,),
        "transformer.ln_f.bias": (d,),
        "lm_head.weight": (vocab, d),
        "lm_head.bias": (vocab,),
    }
    for i in range(layers):
        block = {
            "ln_1.weight": (d,), "ln_1.bias": (d,),
            "attn.c_attn.weight": (3 * d, d), "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
            "ln_2.weight": (d,), "ln_2.bias": (d,),
            "mlp.c_fc.weight": (4 * d, d), "mlp.c_fc.bias": (4 * d,),
            "mlp.c_proj.weight": (d, 4 * d), "mlp.c_proj.bias": (d,),
        }  # fmt: skip
        shapes.update({f"transformer.h.{i}.{k}": v for k, v in block.items()})
    return shapes


def official_forward(state: dict[str, torch.Tensor], ids: torch.Tensor, heads: int) -> torch.Tensor:
    """The official forward pass, written out from its description: LayerNorm(token +
    sinusoidal position), pre-LN blocks with tanh-GELU MLPs, final LayerNorm, biased head."""
    from circuitlab.cot.model import sinusoidal_table

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    b, t = ids.shape
    tok = state["transformer.embedding.tok_embed.weight"]
    d = tok.shape[1]
    x = ln(tok[ids] + sinusoidal_table(t, d), "transformer.embedding.norm")
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.h.")})
    for i in range(layers):
        h = f"transformer.h.{i}"
        q, k, v = linear(ln(x, f"{h}.ln_1"), f"{h}.attn.c_attn").split(d, dim=2)
        q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / (d // heads) ** 0.5
        att = att.masked_fill(torch.ones(t, t).tril() == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + linear(y, f"{h}.attn.c_proj")
        u = linear(ln(x, f"{h}.ln_2"), f"{h}.mlp.c_fc")
        gelu = 0.5 * u * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (u + 0.044715 * u**3)))
        x = x + linear(gelu, f"{h}.mlp.c_proj")
    return linear(ln(x, "transformer.ln_f"), "lm_head")


def test_official_arch_has_the_official_parameters_and_forward() -> None:
    from circuitlab.cot.model import official_name

    model = official_tiny()
    state = {official_name(n): p.detach() for n, p in model.named_parameters()}
    assert {n: tuple(p.shape) for n, p in state.items()} == official_shapes(13, 32, 2)
    # padding_idx 0, as the official nn.Embedding: the pad row starts at zero
    assert (state["transformer.embedding.tok_embed.weight"][0] == 0).all()
    ids = torch.randint(1, 13, (3, 11))
    logits, _ = model(ids)
    assert torch.allclose(logits, official_forward(state, ids, heads=4), atol=1e-5)
    project = tiny()  # the project's arch keeps its own choices
    assert isinstance(project.embed_norm, torch.nn.Identity) and project.head.bias is None


def test_official_weights_load_by_their_official_names() -> None:
    from circuitlab.cot.model import load_official_state_dict, official_name

    source = official_tiny()
    state = {official_name(n): p.detach().clone() for n, p in source.named_parameters()}
    torch.manual_seed(1)
    target = GPT(source.config).eval()
    ids = torch.randint(1, 13, (2, 9))
    assert not torch.allclose(target(ids)[0], source(ids)[0])
    load_official_state_dict(target, state)
    assert torch.equal(target(ids)[0], source(ids)[0])
    with pytest.raises(ValueError, match="not an official checkpoint"):
        load_official_state_dict(target, {"lm_head.weight": state["lm_head.weight"]})
    with pytest.raises(ValueError, match="arch = 'official'"):
        load_official_state_dict(tiny(), state)


def test_alibi_bias_is_the_official_rpe_matrix() -> None:
    """The official --rpe buffer: minus the count of diagonals below (the distance) times
    2^(-8 (h + 1) / heads), future positions masked."""
    from circuitlab.cot.model import alibi_bias

    heads, n = 4, 9
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    for h in range(heads):
        want = -distance.clamp(min=0).float() * 2 ** (-8 / heads * (h + 1))
        got = alibi_bias(heads, 0, n)[h]
        assert torch.equal(torch.isinf(got), distance < 0)
        assert torch.allclose(got[distance >= 0], want[distance >= 0])
    # a cached step: the last query row alone
    assert torch.equal(alibi_bias(heads, n - 1, n), alibi_bias(heads, 0, n)[:, -1:])


def test_alibi_generation_with_the_cache_matches_full_recompute_beyond_trained_length() -> None:
    from circuitlab.cot.model import stretched

    model = tiny("alibi")
    longer = stretched(model, 40)
    assert longer.config.max_len == 40
    prompts = torch.randint(2, 13, (2, 20))
    new = greedy_generate(longer, prompts, 16, eos_id=1)
    seq = prompts
    for _ in range(new.shape[1]):
        logits, _ = longer(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq[:, 20:], new)
    short = torch.randint(2, 13, (1, 10))
    assert torch.equal(longer(short)[0], model(short)[0])  # same function where both run
    with pytest.raises(CircuitlabError, match="learned positions stop at 24"):
        stretched(tiny("learned"), 40)
