"""The frozen original model that NSC-SFT measures its KL against, live or cached.

Live: a second forward pass per step, without gradients. With LoRA the reference is the
model being trained with its adapters switched off (peft's `disable_adapter`), which is
the original model exactly, so nothing is copied; with full fine-tuning it is a frozen
copy made before the first step (twice the weights in memory, none of the optimizer
state).

Cached: the reference's top-k log-probabilities and tail mass at every KL position,
computed once before training (when the model still is the reference) and stored as
safetensors shards under the run directory, one done marker per shard, so a killed
precomputation resumes. Training then needs no second model and no second forward pass,
which also makes it the simple choice under DeepSpeed ZeRO-3 / FSDP, where a second
sharded model is awkward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from circuitlab.analog.nsc_loss import Positions, positions, top_k_reference
from circuitlab.analog.sft_data import Example, collate
from circuitlab.core.io import atomic_open


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_context(model: Any) -> AbstractContextManager[Any]:
    """Inside it, a LoRA (peft) model computes the original model's outputs."""
    return model.disable_adapter() if is_peft(model) else nullcontext()


def model_logp(model: Any, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """log-softmax of the logits at positions `keep`: [batch, len(keep), vocab] in float32."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=keep,
        use_cache=False,
    )
    return torch.log_softmax(out.logits.float(), dim=-1)


class LiveReference:
    """Reference log-probs from a forward pass: adapters disabled (LoRA) or a frozen copy."""

    def __init__(self, model: Any, *, copy_weights: bool) -> None:
        if copy_weights:
            self.model = copy.deepcopy(model).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        else:
            self.model = model  # a peft model: the reference is the same weights, adapters off
        self.shares_weights = not copy_weights

    @torch.no_grad()
    def logp(self, batch: dict[str, torch.Tensor], pos: Positions) -> torch.Tensor:
        """Reference log-probs at the KL positions, [N, vocab] (row-major over the mask)."""
        with reference_context(self.model):
            was_training = self.model.training
            self.model.eval()
            try:
                logp = model_logp(self.model, batch, pos.keep)
            finally:
                self.model.train(was_training)
        return logp[pos.kl]


class CachedReference:
    """Top-k reference log-probs per training example, read from safetensors shards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(directory.glob("shard-*.safetensors")):
            self._tensors.update(load_file(shard))

    def __contains__(self, example: int) -> bool:
        return f"ids.{example}" in self._tensors

    def batch(self, examples: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top ids, top log-probs, tail log-mass) for the rows' KL positions, concatenated in
        row order: the order of `logp[pos.kl]` for a right-padded batch of these examples."""
        ids = torch.cat([self._tensors[f"ids.{e}"] for e in examples]).long()
        values = torch.cat([self._tensors[f"logp.{e}"] for e in examples]).float()
        tail = torch.cat([self._tensors[f"tail.{e}"] for e in examples]).float()
        return ids, values, tail


def precompute_reference(
    model: Any,
    examples: Sequence[Example],
    directory: Path,
    *,
    top_k: int,
    kl_tokens: str,
    pad_id: int,
    batch_size: int = 8,
    shard_size: int = 256,
    device: torch.device | str = "cpu",
    on_shard: Callable[[int], None] | None = None,
) -> CachedReference:
    """Write the reference's top-k at every KL position of every example; skip done shards.

    Call it while `model` still is the reference (before the first optimizer step), or on a
    peft model, whose adapters are switched off for it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(examples), shard_size):
        shard = directory / f"shard-{start // shard_size:05d}.safetensors"
        chunk = range(start, min(start + shard_size, len(examples)))
        if not shard.exists():
            tensors: dict[str, torch.Tensor] = {}
            for i in range(0, len(chunk), batch_size):
                rows = list(chunk[i : i + batch_size])
                tensors.update(_top_k_rows(model, examples, rows, top_k, kl_tokens, pad_id, device))
            with atomic_open(shard, "wb") as handle:
                handle.write(save(tensors))
        if on_shard:
            on_shard(len(chunk))
    return CachedReference(directory)


@torch.no_grad()
def _top_k_rows(
    model: Any,
    examples: Sequence[Example],
    rows: list[int],
    top_k: int,
    kl_tokens: str,
    pad_id: int,
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    batch = {k: v.to(device) for k, v in collate([examples[r] for r in rows], pad_id).items()}
    pos = positions(batch["labels"], batch["attention_mask"], kl_tokens)
    with reference_context(model):
        was_training = model.training
        model.eval()
        try:
            logp = model_logp(model, batch, pos.keep)
        finally:
            model.train(was_training)
    out = {}
    for row, example in enumerate(rows):
        ids, values, tail = top_k_reference(logp[row][pos.kl[row]], top_k)
        out[f"ids.{example}"] = ids.to(torch.int32).cpu().contiguous()
        out[f"logp.{example}"] = values.cpu().contiguous()
        out[f"tail.{example}"] = tail.cpu().contiguous()
    return out


@contextmanager
def frozen(model: Any) -> Iterator[Any]:
    """Eval mode and no gradients for the duration (restores the training flag)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
