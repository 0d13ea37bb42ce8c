"""The frozen original model that NSC-SFT measures its KL against, live or cached.

Live: a second forward pass per step, without gradients. With LoRA the reference is the
model being trained with its adapters switched off (peft's `disable_adapter`), which is
the original model exactly, so nothing is copied; with full fine-tuning it is a frozen
copy made before the first step (twice the weights in memory, none of the optimizer
state).

Live, with LoRA on the top layers only (`lora_layers`, adapters on layers F.. and none
below): the layers below F compute the same residual stream with the adapters on or off,
so the reference need not recompute them. The training forward records the hidden state
entering layer F (a `core.sites` hook), and the reference is the model's own forward,
adapters off, with the layers below F skipped and that state fed in at F
(`core.sites.from_layer`): the model still builds its masks and rotary tables for the
batch, so every layer gets exactly its usual arguments, and its LM head sees only the KL
positions. This is exact, not an approximation (tested against the full pass), and makes
the reference cost F/N of a forward pass less. It is used only where that is known to
hold; everything else takes the full pass (see `adapted_suffix`).

Cached: the reference's top-k log-probabilities and tail mass at every KL position,
computed once before training (when the model still is the reference) and stored as
safetensors shards under the run directory, one done marker per shard, so a killed
precomputation resumes. Training then needs no second model and no second forward pass,
which also makes it the simple choice under DeepSpeed ZeRO-3 / FSDP, where a second
sharded model is awkward.

Hidden: the same precomputation keeps what the original fed its LM head at every KL
position (the last hidden state, d_model numbers a token: 2.3 KB for SmolLM2-135M in
float32), plus a frozen copy of the head. Each step then runs that head and a log-softmax
instead of a forward pass. This is exact, not a top-k bound: the same log-probs as the
live pass up to float rounding. It needs logits that are the head's output (no scaling or
soft-capping after it); the precomputation checks that on every batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from circuitlab.analog.nsc_loss import (
    HeadReference,
    Positions,
    TopKReference,
    positions,
    top_k_reference,
    upcast,
)
from circuitlab.analog.sft_data import Example, collate
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_open
from circuitlab.core.sites import HEAD, Sites, find_sites, from_layer, hooked, layer_input


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


def chunkable_head(model: Any) -> nn.Linear | None:
    """The model's LM head if the chunked loss can run it itself (a plain linear layer, not a
    peft adapter or wrapper around one), else None."""
    head = model.get_output_embeddings()
    return head if type(head) is nn.Linear else None


def head_input(
    model: Any, batch: dict[str, torch.Tensor], keep: torch.Tensor, head: nn.Module
) -> torch.Tensor:
    """What the LM head `head` is fed at positions `keep`: [batch, len(keep), d], with its
    autograd graph, for the chunked loss to project chunk by chunk.

    The head itself then runs on one position per row only, and its output there must be
    the model's logits exactly: a model that scales or soft-caps its logits after the head
    is refused, since projecting its head input would give other log-probs.
    """
    seen: list[torch.Tensor] = []
    made: list[torch.Tensor] = []

    def take(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs["input"]
        seen.append(hidden)
        rest = args[1:] if args else ()
        kwargs = {k: v for k, v in kwargs.items() if k != "input"}
        return (hidden[:, :1], *rest), kwargs

    def made_by_head(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        made.append(output.detach())

    handles = [
        head.register_forward_pre_hook(take, with_kwargs=True),
        head.register_forward_hook(made_by_head),
    ]
    try:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=keep,
            use_cache=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    same = len(seen) == 1 and torch.allclose(
        upcast(out.logits.detach()), upcast(made[0]), rtol=0, atol=0, equal_nan=True
    )
    if not same:
        raise CircuitlabError(
            "this model's logits are not what its LM head computes in one call (scaled or "
            "soft-capped after it, or the head called more than once), so the chunked loss "
            "cannot project the head input itself: use --loss-chunk-tokens 0"
        )
    return seen[0]


# model types for which skipping layers < F and feeding the recorded layer-F input
# reproduces the full forward exactly (tested per type)
SUFFIX_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass(frozen=True)
class Suffix:
    """The part of a peft causal LM from its first adapted decoder layer up: layers
    `start`.., the final norm and the LM head (`sites` of the base model, adapters inside)."""

    start: int
    sites: Sites


def adapted_suffix(model: Any) -> Suffix | None:
    """Where the reference may start from the training forward's layer-F input, or None.

    None (the full reference pass is used) unless all of these hold: `model` is a peft LoRA
    model (not prompt learning) over a causal LM whose type is in SUFFIX_MODEL_TYPES and has
    the usual layout (decoder layers, a final norm, an output embedding); the first adapted
    decoder layer F is above layer 0 (LoRA on all layers saves nothing); and no adapter or
    trainable-module wrapper sits anywhere but in layers F.., the final norm or the head (an
    adapted embedding would change what enters layer F).
    """
    if not is_peft(model):
        return None
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # a peft too old or too new to inspect: take the full pass
        return None
    active = model.peft_config.get(getattr(model, "active_adapter", None))
    if active is None or getattr(active, "is_prompt_learning", True):
        return None
    base = model.get_base_model()
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in SUFFIX_MODEL_TYPES:
        return None
    try:
        sites = find_sites(base)
    except CircuitlabError:
        return None
    norm, head = sites.final_norm, sites.head
    if norm is None or head is None:
        return None
    layers = list(sites.layers)[: config.num_hidden_layers]

    peft_parts = BaseTunerLayer | AuxiliaryTrainingWrapper  # adapters, trained copies

    def adapted(module: nn.Module) -> bool:
        return any(isinstance(m, peft_parts) for m in module.modules())

    start = next((i for i, layer in enumerate(layers) if adapted(layer)), None)
    if not start:  # None (no adapted layer) or 0 (adapters from the bottom up)
        return None
    allowed = {id(m) for part in (*layers[start:], norm, head) for m in part.modules()}
    if any(isinstance(m, peft_parts) and id(m) not in allowed for m in model.modules()):
        return None
    return Suffix(start, sites)


class LiveReference:
    """Reference log-probs from a forward pass: adapters disabled (LoRA) or a frozen copy.

    With LoRA on the top layers only, wrap the training forward in `capturing()`; the next
    `logp` then runs only the adapted layers (see the module docstring). `from_layer=False`
    always takes the full pass: for sharded models (FSDP, ZeRO-3), whose layers gather
    their weights only inside the root module's forward.
    """

    def __init__(self, model: Any, *, copy_weights: bool, from_layer: bool = True) -> None:
        if copy_weights:
            self.model = copy.deepcopy(model).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        else:
            self.model = model  # a peft model: the reference is the same weights, adapters off
        self.shares_weights = not copy_weights
        self.suffix = adapted_suffix(model) if self.shares_weights and from_layer else None
        self._captured: torch.Tensor | None = None

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Record the hidden state entering layer F during the (training) forward inside it.

        A no-op when there is no suffix to run. The record is kept for the next `logp` only
        if layer F ran exactly once (one forward of the model).
        """
        self._captured = None
        if self.suffix is None:
            yield
            return
        hidden: list[torch.Tensor] = []
        site = layer_input(self.suffix.start)
        with hooked(self.suffix.sites, {site: lambda h: hidden.append(h.detach().clone())}):
            yield
        if len(hidden) == 1:
            self._captured = hidden[0]

    @torch.no_grad()
    def _take_capture(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The recorded layer inputs if the last `capturing()` forward was this batch's
        (consumed either way: a record serves one call)."""
        captured, self._captured = self._captured, None
        if captured is None or captured.shape[:2] != batch["input_ids"].shape:
            return None
        return captured if captured.device == batch["input_ids"].device else None

    def logp(self, batch: dict[str, torch.Tensor], pos: Positions) -> torch.Tensor:
        """Reference log-probs at the KL positions, [N, vocab] (row-major over the mask).

        From the recorded layer-F inputs when the last `capturing()` forward was this batch's
        (consumed: a record serves one call), otherwise from a full forward pass.
        """
        captured = self._take_capture(batch)
        with reference_context(self.model):
            was_training = self.model.training
            self.model.eval()
            try:
                if captured is not None:
                    assert self.suffix is not None
                    return suffix_logp(self.model, self.suffix, captured, batch, pos)
                logp = model_logp(self.model, batch, pos.keep)
            finally:
                self.model.train(was_training)
        return logp[pos.kl]

    @torch.no_grad()
    def head_reference(self, batch: dict[str, torch.Tensor], pos: Positions) -> HeadReference:
        """The reference's LM-head input at the KL positions and its head, for the chunked
        loss: `logp`'s rows, but never all at once (the same record rules as `logp`)."""
        captured = self._take_capture(batch)
        with reference_context(self.model):
            head = self.model.get_output_embeddings()
            was_training = self.model.training
            self.model.eval()
            try:
                if captured is not None:
                    assert self.suffix is not None
                    hidden = suffix_head_input(self.model, self.suffix, captured, batch, pos)
                else:
                    hidden = head_input(self.model, batch, pos.keep, head)
            finally:
                self.model.train(was_training)
        bias = None if head.bias is None else head.bias.detach()
        return HeadReference(hidden[pos.kl], head.weight.detach(), bias, autocast=True)


def suffix_logp(
    model: Any, suffix: Suffix, hidden: torch.Tensor, batch: dict[str, torch.Tensor], pos: Positions
) -> torch.Tensor:
    """log-softmax at the KL positions from layers F.. only: [N, vocab] in float32, the rows
    of `model_logp(...)[pos.kl]`, with `hidden` the state that entered layer F on `batch`.

    The head sees only the N positions the KL needs (it acts per position, so this is the
    same numbers as projecting all of `pos.keep` and selecting the KL rows after).
    """
    with (
        from_layer(suffix.sites, suffix.start, hidden),
        hooked(suffix.sites, {HEAD: lambda kept: kept[pos.kl]}),
    ):
        return model_logp(model, batch, pos.keep)


def suffix_head_input(
    model: Any, suffix: Suffix, hidden: torch.Tensor, batch: dict[str, torch.Tensor], pos: Positions
) -> torch.Tensor:
    """`head_input` from layers F.. only, as `suffix_logp` computes its log-probs."""
    with from_layer(suffix.sites, suffix.start, hidden):
        return head_input(model, batch, pos.keep, model.get_output_embeddings())


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

    def top_k(self, examples: Sequence[int], device: torch.device | str) -> TopKReference:
        """`batch` in the form the chunked loss reads, on `device`."""
        ids, values, tail = (t.to(device) for t in self.batch(examples))
        return TopKReference(ids, values, tail)


class CachedHidden:
    """The original's LM-head input at every KL position, and a frozen copy of its head."""

    def __init__(self, directory: Path, head: nn.Module) -> None:
        self.head = head
        self._hidden: dict[str, torch.Tensor] = {}
        for shard in sorted(directory.glob("shard-*.safetensors")):
            self._hidden.update(load_file(shard))

    @torch.no_grad()
    def logp(self, examples: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Reference log-probs [N, vocab] at the rows' KL positions, in `logp[pos.kl]` order."""
        head = self.head.to(device)  # once: a no-op after the first step
        hidden = torch.cat([self._hidden[f"hidden.{e}"] for e in examples])
        return torch.log_softmax(head(hidden.to(device, head.weight.dtype)).float(), dim=-1)

    def head_reference(self, examples: Sequence[int], device: torch.device | str) -> HeadReference:
        """The rows `logp` projects, with the frozen head, for the chunked loss; the head
        runs outside the training autocast, as in `logp`."""
        head = self.head.to(device)
        hidden = torch.cat([self._hidden[f"hidden.{e}"] for e in examples]).to(device)
        bias = None if head.bias is None else head.bias.detach()
        return HeadReference(hidden, head.weight.detach(), bias, autocast=False)


HEAD_FILE = "head.safetensors"


def frozen_head(model: Any, directory: Path) -> nn.Module:
    """A frozen copy of the original LM head, saved beside the cache on first use.

    Saved because full fine-tuning trains the head (tied to the input embeddings in many
    models): a run resumed after a kill must not copy the trained one.
    """
    head = copy.deepcopy(model.get_output_embeddings()).requires_grad_(False).eval()
    path = directory / HEAD_FILE
    if path.exists():
        head.load_state_dict(load_file(path))
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        with atomic_open(path, "wb") as handle:
            handle.write(save(state))
    return head


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
    hidden: bool = False,
) -> CachedReference | CachedHidden:
    """Write the reference's top-k (or, with `hidden`, its LM-head input) at every KL
    position of every example; skip done shards.

    Call it while `model` still is the reference (before the first optimizer step), or on a
    peft model, whose adapters are switched off for it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    head = frozen_head(model, directory) if hidden else None
    for start in range(0, len(examples), shard_size):
        shard = directory / f"shard-{start // shard_size:05d}.safetensors"
        chunk = range(start, min(start + shard_size, len(examples)))
        if not shard.exists():
            tensors: dict[str, torch.Tensor] = {}
            for i in range(0, len(chunk), batch_size):
                rows = list(chunk[i : i + batch_size])
                pos, logp, head_input = _original_pass(
                    model, examples, rows, kl_tokens, pad_id, device, head_input=hidden
                )
                if head_input is None:
                    tensors.update(_top_k_entries(rows, pos, logp, top_k))
                else:
                    tensors.update(_hidden_entries(model, rows, pos, logp, head_input))
            with atomic_open(shard, "wb") as handle:
                handle.write(save(tensors))
        if on_shard:
            on_shard(len(chunk))
    if head is not None:
        return CachedHidden(directory, head)
    return CachedReference(directory)


def _original_pass(
    model: Any,
    examples: Sequence[Example],
    rows: list[int],
    kl_tokens: str,
    pad_id: int,
    device: torch.device | str,
    *,
    head_input: bool = False,
) -> tuple[Positions, torch.Tensor, torch.Tensor | None]:
    """The original model on these examples: KL positions, log-probs [B, K, V] and, with
    `head_input`, what its LM head was fed there [B, K, d]."""
    batch = {k: v.to(device) for k, v in collate([examples[r] for r in rows], pad_id).items()}
    pos = positions(batch["labels"], batch["attention_mask"], kl_tokens)
    seen: list[torch.Tensor] = []
    reading = hooked(find_sites(model), {HEAD: seen.append}) if head_input else nullcontext()
    with reference_context(model), frozen(model), reading:
        logp = model_logp(model, batch, pos.keep)
    if head_input and not seen:
        raise CircuitlabError(
            "this model computes its logits without calling its output-embedding module, so "
            "there is no LM-head input to cache: use --reference live or cached"
        )
    return pos, logp, seen[-1] if seen else None


def _top_k_entries(
    rows: list[int], pos: Positions, logp: torch.Tensor, top_k: int
) -> dict[str, torch.Tensor]:
    """Top-k ids, log-probs and tail mass at each example's KL positions."""
    out = {}
    for row, example in enumerate(rows):
        ids, values, tail = top_k_reference(logp[row][pos.kl[row]], top_k)
        out[f"ids.{example}"] = ids.to(torch.int32).cpu().contiguous()
        out[f"logp.{example}"] = values.cpu().contiguous()
        out[f"tail.{example}"] = tail.cpu().contiguous()
    return out


@torch.no_grad()
def _hidden_entries(
    model: Any, rows: list[int], pos: Positions, logp: torch.Tensor, hidden: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The LM head's input at each example's KL positions, checked to give the log-probs."""
    with reference_context(model):
        again = torch.log_softmax(model.get_output_embeddings()(hidden[pos.kl]).float(), dim=-1)
    if not torch.allclose(again, logp[pos.kl], atol=1e-3):
        raise CircuitlabError(
            "this model's logits are not its LM head's output (scaled or soft-capped after "
            "it), so its hidden states cannot stand in for the reference: use --reference "
            "live or cached"
        )
    return {
        f"hidden.{example}": hidden[row][pos.kl[row]].cpu().contiguous()
        for row, example in enumerate(rows)
    }


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
