"""NSC-SFT: fine-tune a causal LM on QA-with-reasoning data, kept near the original model.

The objective and where its form comes from are in nsc_loss.py: cross-entropy on the
answer tokens plus `kl_lambda` times the per-token KL to the frozen original model
(lambda = 0: plain SFT, and the reference is never run). Full fine-tuning or LoRA (peft);
with LoRA the reference is the same weights with the adapters switched off. The
reference is live (a second forward pass per step; with LoRA on the top layers only, a
pass through those layers alone, from the training forward's input to them), cached
(top-k log-probs computed once before training) or hidden (the LM head's input computed
once, then the frozen head alone each step: exact); see reference.py.

A run directory holds config.json, metrics.jsonl (per step: loss, ce and kl separately,
lr, tokens, seconds, reference seconds), checkpoints/step-N/ (safetensors), model/ (the
final weights: a peft adapter or a full model, plus circuitlab.json naming the base
model) and results.json. A killed run resumes from its newest checkpoint: the data order
is a pure function of (seed, epoch) and there is no dropout by default, so the resumed
run reaches the weights an uninterrupted run reaches.

Devices and scale come from accelerate: one process on the CPU or a GPU as is;
`accelerate launch` (DDP, FSDP or DeepSpeed configs) for several GPUs or machines, where
every rank trains on its share of each step's examples and rank 0 writes the run
directory. With FSDP / ZeRO-3, prefer LoRA or the cached reference: a frozen full copy
would need its own sharding. Under those, prepare() places and shards the weights itself, so
train() leaves the model where it was loaded rather than putting all of it on every GPU first.

Weights load in `dtype` (float32 by default; bfloat16 halves the memory, which a 32B model
needs). The loss is computed in float32 whatever the weights (the logits are upcast before
the log-softmax), by default chunk by chunk from the LM head's input (`loss_chunk_tokens`,
nsc_loss.chunked_ce_kl), so no [tokens, vocab] tensor is kept. What the optimizer
updates: LoRA adapters are float32 either way (peft upcasts them); FSDP and DeepSpeed with
`mixed_precision` bf16 keep float32 master copies of bfloat16-loaded shards (accelerate /
DeepSpeed upcast them); a full fine-tune on one device or under DDP updates the bfloat16
weights themselves, whose 8-bit mantissa swallows most steps of lr 1e-5, so there keep
float32.

Over 500 lines: the config, the Trainer and the resumable loop share the step's private
state (positions, reference caches, the accelerator); the sharded training of issue 24 will
move checkpointing and the reference out, which is where this file splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from circuitlab.analog import nsc_loss
from circuitlab.analog.checkpoints import restore_trainable, trainable_state
from circuitlab.analog.nsc_loss import DIRECTIONS, KL_TOKENS
from circuitlab.analog.reference import (
    HEAD_FILE,
    CachedHidden,
    CachedReference,
    LiveReference,
    chunkable_head,
    head_input,
    model_logp,
    precompute_reference,
)
from circuitlab.analog.sft_data import (
    TRUNCATIONS,
    SFTData,
    check_records,
    collate,
    load_sft_data,
)
from circuitlab.core import checkpoint
from circuitlab.core.config import comma_list, option, require
from circuitlab.core.devices import reuse_freed_memory
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.executor import identity
from circuitlab.core.io import atomic_dir, atomic_write_json, read_json
from circuitlab.core.lm import DTYPES, LoadedLM, load_lm, torch_dtype
from circuitlab.core.runs import RunDir
from circuitlab.core.schedule import SCHEDULES, lr_at
from circuitlab.core.seeding import seed_everything
from circuitlab.core.threads import torch_threads
from circuitlab.core.tracking import REPORT_TO_HELP, check_report_to, open_tracker

REFERENCES = ("live", "cached", "hidden")
PRECOMPUTED = ("cached", "hidden")  # references filled before the first step
PRECISIONS = ("no", "bf16", "fp16")
MODEL_META = "circuitlab.json"
# accelerate distributed types that shard the weights and place them in prepare()
SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")
# settings that change how a run computes, not what: a run resumes under other values
UNSTAMPED = ("loss_chunk_tokens",)
# fields added after runs were recorded without them: those ran as the default does
ADDED = ("truncation",)


@dataclass(frozen=True)
class NSCConfig:
    """One NSC-SFT run. Defaults follow the paper where it says (lambda 0.1, the KL on the
    response tokens, KL(model || reference)); lr defaults to 1e-5 for full fine-tuning and
    2e-4 for LoRA when left unset. `max_steps` caps the steps that `epochs` implies.
    `lora_layers`: adapt only the top N transformer layers (0: all), which makes a CPU step
    several times cheaper because the backward pass stops below them, and lets the live
    reference run only those N layers (see reference.py).
    `verdicts`: records with a reviewer verdict are kept only with one of these (empty:
    all); records without a verdict are always kept.
    `dtype`: the weights as loaded (see the module docstring for what that means for the
    optimizer); `mixed_precision` is accelerate's autocast on top of it."""

    data: str = option(
        help="QA JSONL: prompt/response, or question/answer\\[/reasoning] per line.",
        parse=lambda text: str(Path(text)),
    )
    model: str | None = option(
        None, "Model to fine-tune: a .gguf, a model dir or a hub id \\[default: embedded]."
    )
    kl_lambda: float = option(
        0.1, "Weight of the KL to the original model; 0: plain SFT.", flags=("--lambda",)
    )
    kl_direction: str = option(
        "model||reference",
        "KL direction: 'model||reference' (paper) or 'reference||model'.",
        flags=("--direction",),
    )
    kl_tokens: str = option("response", "KL on 'response' tokens (paper) or 'all'.")
    reference: str = option(
        "live",
        "live (second forward pass), cached (top-k once, before training) or hidden "
        "(the last hidden state once, then only the frozen LM head each step; exact).",
    )
    top_k: int = option(64, "Cached reference: tokens kept per position.")
    lora: bool = option(False, "LoRA adapters or all weights.", flags=("--lora/--full",))
    lora_r: int = option(8, "LoRA rank.")
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    lora_layers: int = option(0, "LoRA on the top N layers only; 0: all.")
    max_length: int = option(1024, "Tokens per example.")
    truncation: str = option(
        "cut",
        "An example longer than --max-length: 'cut' (its reply from the right, losing the "
        "end-of-turn and often the answer) or 'drop' (left out). Counted in results.json.",
    )
    batch_size: int = option(4, "Examples per micro-batch.")
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    epochs: int = option(1, "Passes over the data.")
    max_steps: int | None = option(None, "Stop after this many steps \\[default: all].")
    lr: float | None = option(None, "Peak learning rate \\[default: 1e-5 full, 2e-4 LoRA].")
    weight_decay: float = 0.0
    warmup: float = 0.03
    schedule: str = "cosine"
    grad_clip: float = 1.0
    verdicts: tuple[str, ...] = option(
        ("accept",),
        "Keep records with these reviewer verdicts, comma-separated; '' keeps all.",
        parse=comma_list(),
    )
    system: str | None = None
    seed: int = option(0, "Seed for data order.")
    save_every: int = option(50, "Checkpoint every N steps.")
    keep_checkpoints: int = 2
    mixed_precision: str = option("no", "no, bf16 or fp16.")
    dtype: str = option("float32", "Load the weights as float32, bfloat16 or float16.")
    gradient_checkpointing: bool = False
    threads: int = option(0, "torch CPU threads; 0: torch default.")
    report_to: str = option("none", REPORT_TO_HELP)  # not in the run's identity (tracking.py)
    # not in the run's identity either (UNSTAMPED): the same loss, computed in pieces
    loss_chunk_tokens: int = option(
        1024,
        "Loss over chunks of this many tokens, each chunk's logits recomputed in the "
        "backward, so no \\[tokens, vocab] tensor is kept (152k vocabulary: 2.5 GB per 4k "
        "tokens, several of them unchunked); 0: unchunked. FSDP / DeepSpeed, and an LM head "
        "that is not a plain linear layer (a LoRA-adapted head), keep the unchunked loss.",
    )

    def __post_init__(self) -> None:
        require(bool(self.data), "data: give the QA JSONL file to train on (--data)")
        require(self.kl_lambda >= 0, f"kl_lambda {self.kl_lambda}: must be >= 0 (0 is plain SFT)")
        require(
            self.kl_direction in DIRECTIONS,
            f"kl_direction {self.kl_direction!r}: use {' or '.join(DIRECTIONS)}",
        )
        require(self.kl_tokens in KL_TOKENS, f"kl_tokens {self.kl_tokens!r}: use response or all")
        require(
            self.reference in REFERENCES,
            f"reference {self.reference!r}: use {', '.join(REFERENCES)}",
        )
        require(self.top_k >= 1, f"top_k {self.top_k}: at least 1")
        require(self.lora_r >= 1, f"lora_r {self.lora_r}: at least 1")
        require(self.lora_layers >= 0, f"lora_layers {self.lora_layers}: 0 (all) or more")
        require(0 <= self.lora_dropout < 1, f"lora_dropout {self.lora_dropout}: in [0, 1)")
        require(self.max_length >= 16, f"max_length {self.max_length}: at least 16 tokens")
        require(
            self.truncation in TRUNCATIONS,
            f"truncation {self.truncation!r}: use {' or '.join(TRUNCATIONS)}",
        )
        require(self.batch_size >= 1, f"batch_size {self.batch_size}: at least 1")
        require(self.grad_accum >= 1, f"grad_accum {self.grad_accum}: at least 1")
        require(self.epochs >= 1, f"epochs {self.epochs}: at least 1")
        require(self.max_steps is None or self.max_steps >= 1, f"max_steps {self.max_steps}: >= 1")
        require(self.lr is None or self.lr > 0, f"lr {self.lr}: must be positive")
        require(0 <= self.warmup < 1, f"warmup {self.warmup}: a fraction of all steps, in [0, 1)")
        require(self.schedule in SCHEDULES, f"schedule {self.schedule!r}: {', '.join(SCHEDULES)}")
        require(self.grad_clip >= 0, f"grad_clip {self.grad_clip}: >= 0 (0: off)")
        require(self.save_every >= 1, f"save_every {self.save_every}: at least 1")
        require(self.keep_checkpoints >= 1, f"keep_checkpoints {self.keep_checkpoints}: >= 1")
        require(
            self.mixed_precision in PRECISIONS,
            f"mixed_precision {self.mixed_precision!r}: {', '.join(PRECISIONS)}",
        )
        require(
            self.dtype in DTYPES,
            f"dtype {self.dtype!r}: load the weights as {', '.join(DTYPES)} "
            "(bfloat16 halves the memory of float32)",
        )
        require(self.threads >= 0, f"threads {self.threads}: 0 (torch default) or more")
        require(
            self.loss_chunk_tokens >= 0,
            f"loss_chunk_tokens {self.loss_chunk_tokens}: 0 (unchunked) or more",
        )
        check_report_to(self.report_to)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.lora else 1e-5


def step_examples(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: a seeded permutation per epoch, cut into
    full steps (the last one of an epoch wraps around to the epoch's start)."""
    steps_per_epoch = math.ceil(n / per_step)
    epoch, index = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    picks = [(index * per_step + j) % n for j in range(per_step)]
    return [int(order[p]) for p in picks]


def _data_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise CircuitlabError(f"training data {path} does not exist") from None
    except IsADirectoryError:
        raise CircuitlabError(f"training data {path} is a directory, not a JSONL file") from None


def _wrap_lora(model: Any, config: NSCConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: Any = config.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    elif config.lora_layers:
        # peft takes layers_to_transform only with a list of module names: spell out
        # "all-linear" (every linear layer but the output projection)
        head = model.get_output_embeddings()
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and module is not head
            }
        )
    layers = None
    if config.lora_layers:
        # adapters on the top layers only: the backward pass then stops below them
        count = int(getattr(model.config, "num_hidden_layers", 0))
        require(count > 0, "lora_layers needs a model config with num_hidden_layers")
        layers = list(range(max(0, count - config.lora_layers), count))
    lora = LoraConfig(
        layers_to_transform=layers,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise CircuitlabError(f"cannot add LoRA adapters ({config.lora_targets}): {e}") from None


class Trainer:
    """State of one run between steps: model, optimizer, reference, data."""

    def __init__(
        self, config: NSCConfig, run: RunDir, lm: LoadedLM, data: SFTData, accelerator: Any
    ) -> None:
        self.config, self.run, self.lm, self.data = config, run, lm, data
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.per_step = config.batch_size * config.grad_accum * self.world
        steps = config.epochs * math.ceil(len(data.examples) / self.per_step)
        self.total = min(steps, config.max_steps) if config.max_steps else steps
        model = lm.model
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if config.lora:
            model = _wrap_lora(model, config)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        model.train()
        self.reference: LiveReference | CachedReference | CachedHidden | None = None
        hidden = config.kl_lambda > 0 and config.reference == "hidden"
        if hidden and accelerator.distributed_type in SHARDED:
            raise CircuitlabError(
                "--reference hidden copies the LM head, which FSDP / DeepSpeed shard: "
                "use --reference cached (or live with --lora) there"
            )
        if config.kl_lambda > 0 and config.reference == "live":
            # running layers on their own (the top-layers shortcut) needs unsharded weights
            sharded = accelerator.distributed_type in SHARDED
            self.reference = LiveReference(
                model, copy_weights=not config.lora, from_layer=not sharded
            )
            if not config.lora:  # a frozen copy; with LoRA it is the model being trained
                self.reference.model.to(accelerator.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.unwrapped = model
        # the chunked loss runs the LM head itself, outside the forward: not where FSDP /
        # DeepSpeed gather a sharded head's weights only inside the root module's forward
        head = chunkable_head(model)
        chunked = config.loss_chunk_tokens > 0 and accelerator.distributed_type not in SHARDED
        self.head = head if chunked else None
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.pad_id = lm.tokenizer.pad_token_id

    def precompute(self, on_progress: Callable[[int], None] | None = None) -> None:
        """Fill the cached reference before the first step (the model still is the original)."""
        self.reference = precompute_reference(
            self.unwrapped,
            self.data.examples,
            self.run.path / "reference",
            top_k=self.config.top_k,
            kl_tokens=self.config.kl_tokens,
            pad_id=self.pad_id,
            batch_size=self.config.batch_size,
            device=self.accelerator.device,
            on_shard=on_progress,
            hidden=self.config.reference == "hidden",
        )

    def micro_batches(self, step: int) -> list[list[int]]:
        picks = step_examples(step, len(self.data.examples), self.per_step, self.config.seed)
        rank = self.accelerator.process_index
        size = self.config.batch_size
        mine = picks[
            rank * size * self.config.grad_accum : (rank + 1) * size * self.config.grad_accum
        ]
        return [mine[i : i + size] for i in range(0, len(mine), size)]

    def step(self, step: int) -> dict[str, Any]:
        c, device = self.config, self.accelerator.device
        lr = lr_at(step, self.total, peak=c.learning_rate, warmup=c.warmup, schedule=c.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self.micro_batches(step)
        batches = [
            {
                k: v.to(device)
                for k, v in collate([self.data.examples[i] for i in m], self.pad_id).items()
            }
            for m in micro
        ]
        found = [nsc_loss.positions(b["labels"], b["attention_mask"], c.kl_tokens) for b in batches]
        n_ce = sum(int(p.ce.sum()) for p in found)
        n_kl = sum(int(p.kl.sum()) for p in found)
        started = time.perf_counter()
        ref_seconds = 0.0
        sums = torch.zeros(2, dtype=torch.float64)
        for number, (batch, pos, rows) in enumerate(zip(batches, found, micro, strict=True)):
            last = number == len(batches) - 1
            sync = nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                if self.head is not None:
                    ce, kl, seconds = self.chunked_sums(batch, pos, rows)
                else:
                    ce, kl, seconds = self.sums(batch, pos, rows)
                ref_seconds += seconds
                loss = ce / max(n_ce, 1)
                if c.kl_lambda > 0:
                    loss = loss + c.kl_lambda * kl / max(n_kl, 1)
                self.accelerator.backward(loss)
            sums += torch.tensor([float(ce.detach()), float(kl.detach())], dtype=torch.float64)
        if c.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        totals = torch.tensor([*sums.tolist(), n_ce, n_kl], dtype=torch.float64, device=device)
        totals = self.accelerator.reduce(totals, reduction="sum").cpu()
        ce_mean = float(totals[0] / max(totals[2], 1))
        kl_mean = float(totals[1] / max(totals[3], 1))
        tokens = sum(int(b["attention_mask"].sum()) for b in batches) * self.world
        return {
            "step": step + 1,
            "loss": ce_mean + c.kl_lambda * kl_mean,
            "ce": ce_mean,
            "kl": kl_mean,
            "lambda": c.kl_lambda,
            "lr": lr,
            "tokens": tokens,
            "answer_tokens": int(totals[2]),
            "seconds": round(seconds, 4),
            "ref_seconds": round(ref_seconds, 4),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        }

    def sums(
        self, batch: dict[str, torch.Tensor], pos: nsc_loss.Positions, rows: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(summed CE, summed KL, reference seconds) of one micro-batch, unchunked."""
        # a live reference over LoRA-on-the-top-layers records layer inputs here
        with self.capture_reference():
            logp = model_logp(self.model, batch, pos.keep)
        ce_logp = logp[pos.ce]
        ce = nsc_loss.ce_sum(ce_logp, pos.targets[pos.ce])
        if self.config.kl_lambda == 0:
            return ce, torch.zeros(()), 0.0
        t0 = time.perf_counter()
        # the same rows unless the KL also covers the prompt: one [N, vocab] copy
        kl_logp = ce_logp if pos.kl is pos.ce else logp[pos.kl]
        kl = self.kl_sum(batch, pos, kl_logp, rows)
        return ce, kl, time.perf_counter() - t0

    def chunked_sums(
        self, batch: dict[str, torch.Tensor], pos: nsc_loss.Positions, rows: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """`sums` chunk by chunk from the LM head's input (nsc_loss.chunked_ce_kl). The
        reference seconds count preparing its rows; its head runs inside the chunks."""
        c, head = self.config, self.head
        assert head is not None
        with self.capture_reference():
            hidden = head_input(self.model, batch, pos.keep, head)
        reference: nsc_loss.ChunkReference | None = None
        t0 = time.perf_counter()
        if c.kl_lambda > 0:
            reference = self.chunk_reference(batch, pos, rows, hidden.device)
        seconds = time.perf_counter() - t0
        both = pos.ce if pos.kl is pos.ce else pos.ce | pos.kl  # row-major, as logp[mask]
        with self.accelerator.autocast():  # the head's precision inside the model's forward
            ce, kl = nsc_loss.chunked_ce_kl(
                hidden[both], head.weight, head.bias, pos.targets[both], pos.ce[both],
                pos.kl[both], reference, c.kl_direction, c.loss_chunk_tokens,
            )  # fmt: skip
        return ce, kl, seconds

    def chunk_reference(
        self,
        batch: dict[str, torch.Tensor],
        pos: nsc_loss.Positions,
        rows: list[int],
        device: torch.device,
    ) -> nsc_loss.ChunkReference:
        """The reference at the KL positions in the form the chunked loss reads."""
        if isinstance(self.reference, CachedReference):
            return self.reference.top_k(rows, device)
        if isinstance(self.reference, LiveReference):
            with self.accelerator.autocast():  # as in kl_sum
                return self.reference.head_reference(batch, pos)
        assert isinstance(self.reference, CachedHidden)
        return self.reference.head_reference(rows, device)

    def capture_reference(self) -> AbstractContextManager[Any]:
        if isinstance(self.reference, LiveReference):
            return self.reference.capturing()
        return nullcontext()

    def kl_sum(
        self,
        batch: dict[str, torch.Tensor],
        pos: nsc_loss.Positions,
        model_logp_kl: torch.Tensor,
        rows: list[int],
    ) -> torch.Tensor:
        """Summed KL at the KL positions; `model_logp_kl` is the model's log-probs there."""
        c = self.config
        if isinstance(self.reference, CachedReference):
            ids, values, tail = (t.to(model_logp_kl.device) for t in self.reference.batch(rows))
            return nsc_loss.bucket_kl(model_logp_kl, ids, values, tail, c.kl_direction).sum()
        if isinstance(self.reference, LiveReference):
            # the full pass runs under the prepared model's autocast; the layer shortcut
            # calls layers directly, so give it the same precision explicitly
            with self.accelerator.autocast():
                ref = self.reference.logp(batch, pos)
        else:
            assert isinstance(self.reference, CachedHidden)
            ref = self.reference.logp(rows, model_logp_kl.device)
        return nsc_loss.token_kl(model_logp_kl, ref, c.kl_direction).sum()


def train(
    config: NSCConfig,
    out: str | Path,
    *,
    lm: LoadedLM | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or just report a finished) NSC-SFT run in `out`; returns results.json.

    `lm`: an already loaded model to train *in place* (default: load `config.model` as
    `config.dtype`; a given model keeps the dtype it has).
    `stop_after`: stop after this many optimizer steps in this call (for tests / benchmarks).
    """
    from accelerate import Accelerator

    digest = _data_digest(config.data)
    check_records(config.data)  # before a model is loaded for it
    stamped = {k: v for k, v in identity(config).items() if k not in UNSTAMPED}
    stamp = {**stamped, "data_sha256": digest}
    older = {f.name: f.default for f in dataclasses.fields(NSCConfig) if f.name in ADDED}
    if (Path(out) / "config.json").exists():  # reopening writes nothing
        run = RunDir.open(out, stamp, older)
        if run.is_done("train"):
            return run.results()
    reuse_freed_memory()
    with torch_threads(config.threads):
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        )
        seed_everything(config.seed)
        lm = lm or load_lm(config.model, dtype=torch_dtype(config.dtype))
        data = load_sft_data(
            config.data,
            lm.tokenizer,
            max_length=config.max_length,
            verdicts=config.verdicts,
            system=config.system,
            truncation=config.truncation,
        )
        if progress and accelerator.is_main_process:
            tqdm.write(f"data: {data.truncation.line()}")
        # opened only now that the model and data have loaded: a run refused for a bad
        # input must not leave a config.json that refuses the corrected rerun
        run = RunDir.open(out, stamp, older)
        if accelerator.distributed_type not in SHARDED:
            # FSDP / DeepSpeed place the weights shard by shard in prepare(), as accelerate
            # intends; moving the whole model first would need all of it on every GPU
            lm.model.to(accelerator.device)
        trainer = Trainer(config, run, lm, data, accelerator)
        return _train_loop(trainer, progress, stop_after, on_step)


def _train_loop(
    trainer: Trainer,
    progress: bool,
    stop_after: int | None,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    config, run, accelerator = trainer.config, trainer.run, trainer.accelerator
    main = accelerator.is_main_process
    start = 0
    # the newest intact checkpoint: a damaged newest one is skipped with a warning
    found = checkpoint.load_latest(run.checkpoints)
    if found is not None:
        restore_trainable(trainer.unwrapped, found.weights, found.path)
        trainer.optimizer.load_state_dict(found.optimizer)
        found.restore_rng()
        start = found.step
    if main:
        run.trim_metrics(start)
    tracker = open_tracker(
        config.report_to, run, project="circuitlab-analog", name=run.path.resolve().name,
        config=identity(config), start_step=start, main=main,
    )  # fmt: skip
    if config.kl_lambda > 0 and config.reference in PRECOMPUTED:
        cache = run.path / "reference"
        # the hidden-state cache also needs the original head, saved before the first step
        head_lost = config.reference == "hidden" and not (cache / HEAD_FILE).exists()
        lost = not cache.is_dir() or head_lost
        if start > 0 and lost:
            raise CircuitlabError(
                f"{run.path} resumes at step {start} but its reference cache is missing; "
                "delete the run directory and start again"
            )
        with tqdm(
            total=len(trainer.data.examples),
            desc=f"reference {'hidden states' if config.reference == 'hidden' else 'top-k'}",
            disable=not progress or not main,
        ) as bar:
            trainer.precompute(bar.update)
    started = time.perf_counter()
    bar = tqdm(
        total=trainer.total, initial=start, desc="NSC-SFT" if config.kl_lambda else "SFT",
        disable=not progress or not main,
    )  # fmt: skip
    step = start
    with bar:
        while step < trainer.total:
            if stop_after is not None and step - start >= stop_after:
                break
            record = trainer.step(step)
            step += 1
            if main:
                tracker.log_metrics(**record)
            bar.update(1)
            bar.set_postfix(ce=f"{record['ce']:.3f}", kl=f"{record['kl']:.4f}")
            if on_step:
                on_step(record)
            if step % config.save_every == 0 or step == trainer.total:
                accelerator.wait_for_everyone()
                if main:
                    checkpoint.save_checkpoint(
                        run.checkpoints, trainable_state(trainer.unwrapped), trainer.optimizer,
                        {"step": step, "total": trainer.total}, keep=config.keep_checkpoints,
                    )  # fmt: skip
    tracker.close()
    seconds = time.perf_counter() - started
    metrics = run.metrics()
    summary = _summary(trainer, metrics, step, seconds)
    if step >= trainer.total:
        accelerator.wait_for_everyone()
        if main:
            save_model(trainer, run.path / "model")
            run.write_results(summary)
            run.mark_done("train")
    return summary


def _summary(
    trainer: Trainer, metrics: list[dict[str, Any]], step: int, seconds: float
) -> dict[str, Any]:
    c = trainer.config
    last = metrics[-min(len(metrics), 5) :] if metrics else []
    mean = (lambda key: sum(r[key] for r in last) / len(last)) if last else (lambda key: None)
    step_seconds = [r["seconds"] for r in metrics]
    return {
        "model": trainer.lm.name,
        "base": c.model if c.model is not None else "embedded",
        "lora": c.lora,
        "kl_lambda": c.kl_lambda,
        "kl_direction": c.kl_direction,
        "reference": c.reference if c.kl_lambda > 0 else "none",
        # what the loss ran as: 0 where the unchunked loss was kept (see loss_chunk_tokens)
        "loss_chunk_tokens": c.loss_chunk_tokens if trainer.head is not None else 0,
        "steps": step,
        "total_steps": trainer.total,
        "complete": step >= trainer.total,
        "examples": len(trainer.data.examples),
        "records": trainer.data.records,
        "filtered_by_verdict": trainer.data.filtered,
        "prompt_too_long": trainer.data.too_long,
        "truncated": trainer.data.truncated,
        "truncation": trainer.data.truncation.as_dict(),
        "trainable_parameters": sum(
            p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad
        ),
        "first_ce": metrics[0]["ce"] if metrics else None,
        "first_kl": metrics[0]["kl"] if metrics else None,
        "final_ce": mean("ce"),
        "final_kl": mean("kl"),
        "mean_step_seconds": round(sum(step_seconds) / len(step_seconds), 4)
        if step_seconds
        else None,
        "session_seconds": round(seconds, 2),
    }


def kl_summary(result: dict[str, Any], digits: int = 4) -> str:
    """The training KL for a log line; plain SFT (lambda 0) never computes it, so no 0."""
    if not result["kl_lambda"]:
        return "KL not measured (lambda 0)"
    if result["final_kl"] is None:
        return "KL not measured (no steps run)"
    return f"KL {result['final_kl']:.{digits}f}"


def save_model(trainer: Trainer, target: Path) -> None:
    """Final weights (safetensors) + tokenizer + circuitlab.json, renamed into place at once."""
    c = trainer.config
    with atomic_dir(target) as tmp:
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(tmp, safe_serialization=True)
        trainer.lm.tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / MODEL_META,
            {
                "base": c.model or "embedded",
                "base_name": trainer.lm.name,
                "lora": c.lora,
                "kl_lambda": c.kl_lambda,
            },
        )


@dataclass(frozen=True)
class TrainedLM:
    """A model to evaluate, and the original model it was trained from (if known)."""

    lm: LoadedLM
    base: str | None  # spec of the original model, for drift
    lora: bool


def load_model(spec: str | None, *, dtype: str = "float32", device: str = "cpu") -> TrainedLM:
    """Load a model spec (embedded, .gguf, model dir, hub id), a trained model/ directory or a
    training run directory (its model/), with its weights as `dtype` on `device`.

    For a LoRA run that is the base in `dtype` with the adapters on top (peft keeps them
    float32 and on the base's device)."""
    weights = torch_dtype(dtype)
    if spec is not None:
        path = Path(spec).expanduser()
        if (path / "model" / MODEL_META).is_file():
            path = path / "model"
        if (path / MODEL_META).is_file():
            meta = read_json(path / MODEL_META)
            if meta["lora"]:
                from peft import PeftModel

                base = load_lm(meta["base"], dtype=weights, device=device)
                model = PeftModel.from_pretrained(base.model, str(path)).eval()
                name = f"{base.name}+{path.parent.name if path.name == 'model' else path.name}"
                return TrainedLM(
                    LoadedLM(model, base.tokenizer, name, str(path)), meta["base"], True
                )
            loaded = load_lm(str(path), dtype=weights, device=device)
            name = path.parent.name if path.name == "model" else path.name
            return TrainedLM(
                LoadedLM(loaded.model, loaded.tokenizer, name, str(path)), meta["base"], False
            )
    return TrainedLM(load_lm(spec, dtype=weights, device=device), None, False)
