"""Random-init tiny models for fast tests of core.sites, circuits and analog: GPT-2, Pythia
(GPT-NeoX) and Llama (grouped-query) with scaled-up weights (`tiny_model`), and configs of the
Llama family (`LLAMA_FAMILY`: Llama, Mistral and Qwen2 with sliding windows, Qwen3)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from circuitlab.core.lm import LoadedLM

ARCHS = ("gpt2", "pythia", "llama")

# 4 layers of 4 query heads on 2 key/value heads (head_dim 8), vocabulary 97
SIZES = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
LLAMA_FAMILY = {
    "llama": lambda: LlamaConfig(**SIZES),
    "mistral": lambda: MistralConfig(**SIZES, sliding_window=6),
    # layer 3 slides, layers 0-2 do not: each layer needs its own mask
    "qwen2": lambda: Qwen2Config(
        **SIZES, use_sliding_window=True, sliding_window=6, max_window_layers=3
    ),
    "qwen3": lambda: Qwen3Config(**SIZES, head_dim=8),
}


def tiny_model(arch: str, vocab_size: int, *, layers: int = 3, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=32,
            n_head=4,
            n_layer=layers,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPT2LMHeadModel(config)
    elif arch == "pythia":
        config = GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=layers,
            intermediate_size=64,
            rotary_pct=0.5,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPTNeoXForCausalLM(config)
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            num_hidden_layers=layers,
            intermediate_size=64,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(arch)
    # Default inits are tiny (std 0.02): scale matrices and biases up so that heads differ
    # clearly and a wrong index or a leaked pad would change numbers well above float noise.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return model.eval()


def tiny_lm(arch: str, tokenizer: Any, **kwargs: Any) -> LoadedLM:
    model = tiny_model(arch, len(tokenizer), **kwargs)
    return LoadedLM(model=model, tokenizer=tokenizer, name=f"tiny-{arch}", source="config")
