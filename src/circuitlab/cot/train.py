"""Training one model on one task, size and format, resumable after a kill.

A run directory holds everything: config.json, metrics.jsonl (loss, lr, tokens/s; eval
points), checkpoints/step-N/ (core/checkpoint.py: weights, optimizer, position and RNG
states, checksummed) and results.json with the final evaluation. Resuming rebuilds the data
(generation is deterministic and takes seconds), restores the latest checkpoint and skips
the batches already seen in the current epoch, so a killed and resumed run ends in exactly
the state an uninterrupted run reaches.

Several GPUs: launch the same command under `torchrun --nproc_per_node N` or
`accelerate launch`; accelerate joins the process group and wraps the model for DDP (as
in analog), each rank trains on its share of every epoch's batches and rank 0 writes the
run directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from circuitlab.core import checkpoint
from circuitlab.core.checkpoint import list_checkpoints
from circuitlab.core.devices import pick_device
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.executor import identity
from circuitlab.core.runs import RunDir
from circuitlab.core.tracking import open_tracker
from circuitlab.cot.batching import epoch_plan, shard
from circuitlab.cot.config import TrainConfig
from circuitlab.cot.curves import plot_learning_curve
from circuitlab.cot.data import generate_splits, question_keys
from circuitlab.cot.evaluate import EvalResult, evaluate_model
from circuitlab.cot.files import read_data_files
from circuitlab.cot.model import GPT, ModelConfig
from circuitlab.cot.optim import learning_rate, make_optimizer
from circuitlab.cot.sequences import Sequences, build_sequences, loss_labels
from circuitlab.cot.tasks import get_task
from circuitlab.cot.tasks.common import TokenBatch


@dataclass
class Prepared:
    """Data and model shape of a run, rebuilt identically on every (re)start."""

    train: Sequences
    test: Sequences
    model_config: ModelConfig


def prepare(config: TrainConfig) -> Prepared:
    task = get_task(config.task)
    vocab = task.vocab(config.size, config.data.task_arg)
    if config.data_file:
        train, test = read_data_files(config.data_file, task, vocab, config.format)
    else:
        splits = generate_splits(config.data)
        train_batch = splits.train
        if config.mix_smaller > 0:
            train_batch = _mix_in_smaller(train_batch, config)
        train = build_sequences(task, train_batch, vocab, config.format)
        test = build_sequences(task, splits.test, vocab, config.format)
    # Room beyond the longest true sequence, so a wrong (longer) generation can still end.
    max_len = max(train.max_len, test.max_len) + 8
    model_config = ModelConfig(
        vocab_size=len(vocab),
        max_len=max_len,
        layers=config.layers,
        d_model=config.d_model,
        heads=config.heads,
        dropout=config.dropout,
        positions=config.positions,
        embed_std=config.embed_std,
        arch=config.arch,
    )
    return Prepared(train, test, model_config)


def fresh_test(config: TrainConfig, count: int, size: int | None = None) -> Sequences:
    """`count` new test problems (another seed) of `size` (default: the trained size),
    none of whose questions was trained on."""
    if config.data_file:
        raise CircuitlabError(
            "this run trained on --data: fresh problems could repeat its training questions"
        )
    task = get_task(config.task)
    arg = config.data.task_arg
    vocab = task.vocab(config.size, arg)
    size = config.size if size is None else size
    task.check_size(size)
    if task.vocab(size, arg) != vocab:
        raise CircuitlabError(
            f"--size {size}: the {task.name} vocabulary at size {size} differs from the "
            f"trained size {config.size}'s, so the model cannot read those problems"
        )
    seen = set(question_keys(generate_splits(config.data).train))
    draw = dataclasses.replace(
        config.data, size=size, num=count, test_num=0, seed=config.data_seed + 1, under=False,
        corrupt_rate=0.0,
    )  # fmt: skip
    batch = generate_splits(draw).train
    keep = np.array([k not in seen for k in question_keys(batch)], dtype=bool)
    return build_sequences(task, batch.select(keep), vocab, config.format)


def _mix_in_smaller(batch: TokenBatch, config: TrainConfig) -> TokenBatch:
    """Replace a `mix_smaller` share of the training set by problems of sizes below `size`.

    The official `--under` option does this for arithmetic: short problems teach the
    one-step facts the long ones are built of. Smaller sizes get equal shares; they are
    drawn independently (repeats allowed) and cannot collide with the test set, whose
    problems all have the full size.
    """
    task = get_task(config.task)
    sizes = [k for k in range(task.min_size, config.size)]
    if not sizes:
        return batch
    arg = config.data.task_arg
    vocab = task.vocab(config.size, arg)
    if any(task.vocab(k, arg) != vocab for k in sizes):
        raise CircuitlabError(
            f"mix_smaller needs one vocabulary for all sizes, which {config.task} does not have"
        )
    smaller = round(len(batch) * config.mix_smaller)
    rng = np.random.default_rng([config.data_seed, 7919])
    parts = [batch.select(slice(0, len(batch) - smaller))]
    for i, k in enumerate(sizes):
        count = smaller // len(sizes) + (1 if i < smaller % len(sizes) else 0)
        if count:
            parts.append(task.generate(rng, k, count, arg))
    return TokenBatch.concat(parts)


# ------------------------------------------------------------------ distributed set-up


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the process group when launched by torchrun / accelerate launch (WORLD_SIZE > 1)
    through accelerate, as analog does (backend, device per rank); one process needs
    neither the group nor accelerate's import."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return World(state.process_index, state.num_processes, state.local_process_index)


def _data_parallel(model: GPT, device: torch.device) -> torch.nn.Module:
    """`model` wrapped for DDP by accelerate. Mixed precision stays ours (`amp`), so an
    accelerate config's setting cannot add a second autocast around the forward."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    return accelerator.prepare_model(model, device_placement=False)


# ------------------------------------------------------------------ checkpoints


def _checkpoints(run: RunDir) -> list[Path]:
    """The run's checkpoints, oldest first; one written before checkpoints had checksums
    (trainer.json, a pickled state.pt) cannot be resumed, and saying so beats retraining."""
    found = list_checkpoints(run.checkpoints)
    if not found and (old := sorted(run.checkpoints.glob("step-*/trainer.json"))):
        raise CircuitlabError(
            f"{old[-1].parent} was written by an older circuitlab and cannot be resumed; "
            "delete its checkpoints/ to train the run again"
        )
    return found


def save_checkpoint(
    run: RunDir,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    position: dict[str, Any],
    keep: int = 2,
) -> Path:
    """checkpoints/step-N: weights, optimizer, RNG states and `position`; keep the newest."""
    return checkpoint.save_checkpoint(
        run.checkpoints, model.state_dict(), optimizer, position, keep=keep
    )


def restore_checkpoint(run: RunDir, model: GPT, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the newest intact checkpoint (a damaged newest one is skipped with a
    warning); returns its position."""
    found = checkpoint.load_latest(run.checkpoints)
    assert found is not None, "called with checkpoints present"
    model.load_state_dict(found.weights)
    optimizer.load_state_dict(found.optimizer)
    found.restore_rng()
    return found.state


# ------------------------------------------------------------------ the loop


def _autocast(device: torch.device, amp: str) -> AbstractContextManager[Any]:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext()
    if amp == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _batches(
    data: Sequences, config: TrainConfig, world: World, epoch: int, skip: int
) -> Iterator[tuple[int, np.ndarray]]:
    plan = shard(_epoch_plan(data, config, epoch), world.rank, world.size)
    for i in range(skip, len(plan)):
        yield i, plan[i]


def _epoch_plan(data: Sequences, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    by_length = config.batching == "length"
    return epoch_plan(data.lengths, config.batch_size, config.seed, epoch, by_length=by_length)


def steps_per_epoch(data: Sequences, config: TrainConfig, world: World) -> int:
    return len(shard(_epoch_plan(data, config, 0), 0, world.size))


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in `out`; return its results (also in results.json).

    on_step(step, total) after every optimizer step: how a sweep's worker processes report
    their progress to the parent, whose own bar they cannot draw.
    """
    world = init_world()
    fields = identity(config)
    defaults = identity(TrainConfig())  # fields a run made by an older version lacks
    if world.main and (Path(out) / "config.json").exists():  # reopening writes nothing
        run = RunDir.open(out, fields, defaults)
        if run.is_done("train") and (run.path / "results.json").exists():
            return run.results()
    # Whatever can refuse this config runs before config.json is written: a refused run
    # must not leave a config behind that refuses the corrected rerun as "differs in".
    device = pick_device(config.device)
    prepared = prepare(config)
    run = RunDir.open(out, fields, defaults) if world.main else RunDir(Path(out))
    if run.is_done("train") and (run.path / "results.json").exists():
        return run.results()
    existing = _checkpoints(run)
    if existing and not resume:
        raise CircuitlabError(
            f"{run.path} holds an unfinished run (checkpoint {existing[-1].name}); "
            "pass --resume to continue it or choose another --out"
        )
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    torch.manual_seed(config.seed)
    model = GPT(prepared.model_config).to(device)
    optimizer = make_optimizer(model, config, device)
    position = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "seconds": 0.0}
    if existing:
        position = restore_checkpoint(run, model, optimizer)
        if world.main:
            run.trim_metrics(position["step"])
    tracker = open_tracker(
        config.report_to, run, project="circuitlab-cot", name=run.path.resolve().name,
        config=fields, start_step=position["step"], main=world.main,
    )  # fmt: skip
    ddp_model = _data_parallel(model, device) if world.size > 1 else model

    per_epoch = steps_per_epoch(prepared.train, config, world)
    total = per_epoch * config.epochs
    # training problems each evaluation also scores: at most the test's cost again
    fit_count = min(len(prepared.test), config.eval_examples)
    scaler = torch.amp.GradScaler(enabled=config.amp == "fp16" and device.type == "cuda")
    ids_all = torch.as_tensor(prepared.train.ids)
    labels_all = torch.as_tensor(
        loss_labels(prepared.train.ids, prepared.train.lengths, prepared.train.prompt)
    )
    lengths, prompts = prepared.train.lengths, prepared.train.prompt
    task = get_task(config.task)
    vocab = task.vocab(config.size, config.data.task_arg)

    bar = tqdm(
        total=total,
        initial=position["step"],
        desc=f"train {config.task} n={config.size} {config.format}",
        disable=quiet or not world.main,
        unit="step",
        dynamic_ncols=True,
    )
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter() - position["seconds"]
    model.train()
    for epoch in range(position["epoch"], config.epochs):
        for index, rows in _batches(
            prepared.train,
            config,
            world,
            epoch,
            position["batch"] if epoch == position["epoch"] else 0,
        ):
            width = int(lengths[rows].max())
            # Positions before the earliest answer in the batch have no label (loss_labels).
            first = int(prompts[rows].min()) - 1
            ids = ids_all[rows, :width].to(device, non_blocking=True)
            labels = labels_all[rows, first:width].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, position["step"], total, epoch)
            with _autocast(device, config.amp):
                logits, _ = ddp_model(ids, logits_from=first)
                loss = F.cross_entropy(
                    logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.grad_clip > 0:  # a max norm of 0 would zero every gradient
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            tokens = int(lengths[rows].sum()) * world.size
            position.update(
                step=position["step"] + 1,
                epoch=epoch,
                batch=index + 1,
                tokens=position["tokens"] + tokens,
            )
            window_tokens += tokens
            step = position["step"]
            if step % config.log_every == 0 or step == total:
                elapsed = time.perf_counter() - window_start
                rate = window_tokens / max(elapsed, 1e-9)
                window_tokens, window_start = 0, time.perf_counter()
                loss_value = float(loss.detach())
                if world.main:
                    tracker.log_metrics(
                        step=step,
                        epoch=epoch,
                        loss=loss_value,
                        lr=optimizer.param_groups[0]["lr"],
                        tokens_per_s=rate,
                        tokens=position["tokens"],
                    )
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{rate:,.0f}", epoch=epoch + 1)
            bar.update(1)
            if on_step:
                on_step(step, total)
            if step % config.checkpoint_every == 0 and world.main:
                position["seconds"] = time.perf_counter() - run_start
                save_checkpoint(run, model, optimizer, dict(position))
        position.update(epoch=epoch + 1, batch=0)
        if (
            config.eval_every
            and (epoch + 1) % config.eval_every == 0
            and epoch + 1 < config.epochs
            and world.main
        ):
            test_result = _evaluate(
                model, task, vocab, prepared.test, config, device, config.eval_examples
            )
            train_result = _evaluate(
                model, task, vocab, prepared.train, config, device,
                fit_count,
            )  # fmt: skip
            tracker.log_metrics(
                step=position["step"],
                epoch=epoch + 1,
                **_accuracies("eval_", test_result),
                **_accuracies("train_", train_result),
            )
    bar.close()
    seconds = time.perf_counter() - run_start
    if not world.main:
        tracker.close()
        return {}
    position["seconds"] = seconds
    save_checkpoint(run, model, optimizer, dict(position), keep=1)
    eval_start = time.perf_counter()
    result = _evaluate(model, task, vocab, prepared.test, config, device, None)
    on_train = _evaluate(model, task, vocab, prepared.train, config, device, fit_count)
    logged = run.metrics()
    if not any("eval_official_accuracy" in r and r["step"] == position["step"] for r in logged):
        # (a run killed after this line and resumed has it already)
        final = {**_accuracies("eval_", result), **_accuracies("train_", on_train)}
        tracker.log_metrics(step=position["step"], epoch=config.epochs, **final)
        logged.append({"step": position["step"], "epoch": config.epochs, **final})
    plot_learning_curve(logged, run.path / "accuracy.png", config)
    results = {
        "task": config.task,
        "size": config.size,
        "format": config.format,
        "layers": config.layers,
        "seed": config.seed,
        **result.to_dict(),
        **_accuracies("train_", on_train),
        "parameters": model.num_parameters(),
        "steps": position["step"],
        "train_tokens": position["tokens"],
        "train_seconds": seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "tokens_per_s": position["tokens"] / max(seconds, 1e-9),
    }
    tracker.close()
    run.write_results(results)
    run.mark_done("train")
    return results


def _evaluate(
    model: GPT,
    task: Any,
    vocab: Any,
    test: Sequences,
    config: TrainConfig,
    device: torch.device,
    limit: int | None,
) -> EvalResult:
    """Score `limit` examples of `test` spread evenly over it (a mixed training set is
    ordered by size, so its first rows would all be the smallest problems)."""
    if limit is not None and limit < len(test):
        rows = np.linspace(0, len(test) - 1, limit).astype(np.int64)
        test = Sequences(test.ids[rows], test.lengths[rows], test.prompt[rows])
    arg = config.data.task_arg
    budget = generation_budget(config, model)
    return evaluate_model(
        model, task, vocab, test, config.format, arg, device=device, max_new=budget
    )


def generation_budget(config: TrainConfig, model: GPT) -> int | None:
    """New tokens a generation may take: None (the test references' longest plus 8) for
    generated data; the model's whole length for --data files, whose official CoT test
    lines hold no chain to measure by."""
    return model.config.max_len if config.data_file else None


def _accuracies(prefix: str, result: EvalResult) -> dict[str, Any]:
    """The numbers of `result` under `prefix` (eval_: test split, train_: training set)."""
    return {f"{prefix}{k}": v for k, v in result.to_dict().items() if k != "first_error"}


def load_run(out: str | Path) -> tuple[TrainConfig, GPT, Prepared]:
    """A finished (or checkpointed) run's config, model with its latest weights, and data."""
    run = RunDir(Path(out))
    if not (run.path / "config.json").exists():
        raise CircuitlabError(f"{run.path} is not a cot training run (no config.json)")
    from circuitlab.core.config import config_from_dict

    config = config_from_dict(TrainConfig, run.config)
    prepared = prepare(config)
    model = GPT(prepared.model_config)
    model.load_state_dict(_latest_weights(run))
    return config, model, prepared


def _latest_weights(run: RunDir) -> dict[str, torch.Tensor]:
    """The newest intact weights; a run finished before checkpoints had checksums has its
    weights in the same file, unverified, and still loads."""
    if list_checkpoints(run.checkpoints):
        found = checkpoint.load_latest(run.checkpoints)
        assert found is not None
        return found.weights
    old = sorted(run.checkpoints.glob("step-*/trainer.json"))
    if not old:
        raise CircuitlabError(f"{run.path} has no checkpoint yet: train it first")
    return load_file(old[-1].parent / "model.safetensors")
