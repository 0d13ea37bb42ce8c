"""A small GPT decoder, written out rather than borrowed from `transformers`.

Why not GPT2 from a config: the cot experiments vary exactly the parts `transformers` hides
(positional encoding, depth at fixed width, dropout placement), the models are tiny, and a
100-line module makes the architecture the paper reasons about readable in one screen. It
uses PyTorch's fused `scaled_dot_product_attention` (the official minGPT code multiplies
and masks attention matrices by hand) and a key/value cache for greedy generation.

Layout as in minGPT / the official code: pre-LayerNorm blocks, GELU MLP of width 4 d, learned
token embeddings, untied output head; positions are sinusoidal (the paper), learned, or
ALiBi-style distance biases in attention (the official code's `--rpe`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from circuitlab.core.config import require
from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.config import ModelShape

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelShape):
    """Shape of the decoder. `vocab_size` and `max_len` come from the task's data."""

    vocab_size: int
    max_len: int

    def __post_init__(self) -> None:
        require(self.vocab_size >= 2, "vocab_size must be at least 2")
        require(self.max_len >= 2, "max_len must be at least 2")
        super().__post_init__()


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of Vaswani et al. (what the paper's models use)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


def alibi_bias(heads: int, start: int, end: int, device: Any = None) -> torch.Tensor:
    """Additive attention bias [heads, end - start, end] of the official `--rpe` (ALiBi):
    query i and key j <= i get -(i - j) * 2^(-8 (h + 1) / heads) in head h, future keys
    -inf, so the bias doubles as the causal mask."""
    slopes = 2.0 ** (-8.0 / heads * torch.arange(1, heads + 1, dtype=torch.float32))
    queries = torch.arange(start, end, dtype=torch.float32)[:, None]
    distance = queries - torch.arange(end, dtype=torch.float32)[None, :]
    bias = -distance[None] * slopes[:, None, None]
    return bias.masked_fill_(distance[None] < 0, float("-inf")).to(device)


class Dropout(nn.Module):
    """`nn.Dropout` with a cheaper random mask on the CPU.

    On the CPU, `bernoulli_` draws one Mersenne-twister number per element and was an eighth
    of a training step in the profile (bench_cot_train.py). Here each 64-bit draw gives four
    16-bit uniforms, which cuts mask generation about fivefold; the drop probability is
    rounded to a multiple of 1/65536 (0.1 becomes 0.100006). Other devices use
    `F.dropout`, whose random numbers are already cheap there.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _MaskedScale.apply(x, keep_scale(x, self.p))


def keep_scale(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout multiplier shaped like `x`: 0 with probability ~p, else 1 / (1 - p)."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    uniform16 = words.view(torch.int16)[:n].view(x.shape)
    keep = uniform16 >= round(p * 65536) - 32768
    return keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class _MaskedScale(torch.autograd.Function):
    """x * scale with `scale` treated as a constant; saves only the multiplier."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.attn_drop = Dropout(config.dropout)
        self.resid_drop = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        keep_from: int = 0,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention over all positions; the output only for positions `keep_from` on.
        `bias` (alibi_bias) is added to the scores and carries the causal mask."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # With a cache the new tokens come last, so they may see every cached position;
        # causal masking is only needed among the new tokens themselves.
        causal = t > 1
        if causal and past is not None:
            raise ValueError("with a cache, feed one token at a time")
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # The CPU's fused kernel has no dropout, so SDPA would fall back to this same
            # sequence with the slow mask; written out, it uses `Dropout`'s cheap one.
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            if bias is None:
                future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu_(1)
                scores = scores.masked_fill_(future, float("-inf"))
            else:
                scores = scores + bias
            y = self.attn_drop(scores.softmax(-1)) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=bias,
                is_causal=causal and bias is None,
                dropout_p=self.dropout if self.training else 0.0,
            )  # fmt: skip
        y = y.transpose(1, 2)[:, keep_from:].reshape(b, t - keep_from, d)
        return self.resid_drop(self.proj(y)), (k, v)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(approximate="tanh" if config.arch == "official" else "none"),
            nn.Linear(4 * config.d_model, config.d_model),
            Dropout(config.dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        keep_from: int = 0,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block's output for positions `keep_from` on (keys and values for all)."""
        a, present = self.attn(self.ln1(x), past, keep_from, bias)
        x = x[:, keep_from:] + a
        return x + self.mlp(self.ln2(x)), present


class GPT(nn.Module):
    """Decoder-only transformer; `forward` returns logits for every position."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        official = config.arch == "official"
        # the official embedding has padding_idx 0: the padding row starts at zero, never trains
        self.tok = nn.Embedding(
            config.vocab_size, config.d_model, padding_idx=0 if official else None
        )
        self.pos: torch.Tensor | None
        if config.positions == "learned":
            self.pos = nn.Parameter(torch.zeros(config.max_len, config.d_model))
        elif config.positions == "sinusoidal":
            self.register_buffer(
                "pos", sinusoidal_table(config.max_len, config.d_model), persistent=False
            )
        else:
            self.pos = None  # alibi: distances enter the attention scores instead
        self.embed_norm = nn.LayerNorm(config.d_model) if official else nn.Identity()
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=official)
        if official:
            return  # PyTorch's default initialisation, as the official code keeps
        self.apply(_init_weights)
        # Token embeddings start at the scale of the sinusoidal table they are added to. At
        # GPT-2's 0.02 the position signal drowns the token identity after LayerNorm, and
        # training sits at chance for thousands of steps until the embeddings grow.
        nn.init.normal_(self.tok.weight, mean=0.0, std=config.embed_std)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                # GPT-2's scaling of residual projections keeps early activations bounded.
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.layers))

    def forward(
        self, ids: torch.Tensor, cache: KVCache | None = None, logits_from: int = 0
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits for positions `logits_from` on, and the keys/values of every position.

        Training passes the first position that has a label: the question carries no loss,
        so the last block skips its projection and MLP there (on the direct tasks, whose
        answer is one token after a long question, that is most of the last block).
        """
        start = 0 if cache is None else cache[0][0].shape[2]
        end = start + ids.shape[1]
        if end > self.config.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds max_len {self.config.max_len}")
        if not 0 <= logits_from < ids.shape[1]:
            raise ValueError(f"logits_from {logits_from} outside 0..{ids.shape[1] - 1}")
        x = self.tok(ids)
        bias = None
        if self.pos is None:
            bias = alibi_bias(self.config.heads, start, end, ids.device)
        else:
            x = x + self.pos[start:end]
        x = self.drop(self.embed_norm(x))
        presents: KVCache = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            keep_from = logits_from if i == last else 0
            x, present = block(x, None if cache is None else cache[i], keep_from, bias)
            presents.append(present)
        return self.head(self.ln_f(x)), presents

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM-appendix style."""
        c = self.config
        matmul_params = c.layers * 12 * c.d_model**2 + c.d_model * c.vocab_size
        attention = c.layers * 2 * seq_len * c.d_model  # scores + weighted sum, averaged causal
        return 3 * (2 * matmul_params + 2 * attention)


def stretched(model: GPT, max_len: int) -> GPT:
    """The same model for sequences up to `max_len`, to run it on longer problems than it
    was trained on. Fixed (sinusoidal) and relative (alibi) positions extend; learned
    positions have no row beyond the trained length."""
    if max_len <= model.config.max_len:
        return model
    if model.config.positions == "learned":
        raise CircuitlabError(
            f"learned positions stop at {model.config.max_len} tokens; sequences of "
            f"{max_len} need positions = sinusoidal or alibi"
        )
    longer = GPT(dataclasses.replace(model.config, max_len=max_len))
    longer.load_state_dict(model.state_dict())
    return longer.train(model.training).to(next(model.parameters()).device)


# Our parameter names -> the official model.py's, block by block (`i` is the block index).
_OFFICIAL_NAMES = {
    "tok.weight": "transformer.embedding.tok_embed.weight",
    "embed_norm.weight": "transformer.embedding.norm.weight",
    "embed_norm.bias": "transformer.embedding.norm.bias",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
    "head.weight": "lm_head.weight",
    "head.bias": "lm_head.bias",
}
_OFFICIAL_BLOCK = {
    "ln1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ln2": "ln_2",
    "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj",
}  # fmt: skip


def official_name(name: str) -> str:
    """The official model.py's name of parameter `name` of an `arch = "official"` GPT, so
    a checkpoint of the official code loads (`load_official_state_dict`)."""
    if name in _OFFICIAL_NAMES:
        return _OFFICIAL_NAMES[name]
    if not name.startswith("blocks."):
        raise ValueError(f"the official model has no parameter like {name!r}")
    _, index, rest = name.split(".", 2)  # blocks.<i>.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"transformer.h.{index}.{_OFFICIAL_BLOCK[module]}.{kind}"


def load_official_state_dict(model: GPT, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by the official code (its buffers, the position table and the
    attention masks, are rebuilt here and ignored)."""
    if model.config.arch != "official":
        raise ValueError("official weights need a model with arch = 'official'")
    wanted = {official_name(n): n for n, _ in model.named_parameters()}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"not an official checkpoint: no {', '.join(missing[:3])}")
    model.load_state_dict({ours: state[theirs] for theirs, ours in wanted.items()})


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


@torch.no_grad()
def greedy_generate(model: GPT, prompts: torch.Tensor, max_new: int, eos_id: int) -> torch.Tensor:
    """Greedy continuation of equal-length prompts [B, Lp] -> new tokens [B, <= max_new].

    Rows that have produced `eos_id` keep emitting it; generation stops early once every row
    has. Uses the key/value cache, so each new token costs one position of compute.
    """
    max_new = min(max_new, model.config.max_len - prompts.shape[1])
    logits, cache = model(prompts)
    out: list[torch.Tensor] = []
    done = torch.zeros(prompts.shape[0], dtype=torch.bool, device=prompts.device)
    for _ in range(max_new):
        nxt = logits[:, -1].argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        logits, cache = model(nxt[:, None], cache)
    if not out:
        return prompts.new_zeros((prompts.shape[0], 0))
    return torch.stack(out, dim=1)
