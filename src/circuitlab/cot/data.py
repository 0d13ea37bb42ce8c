"""Datasets of one task and size: deduplicated train/test splits, JSON lines, statistics.

Questions are deduplicated across both splits (the official generator deduplicates whole
sequences, which let about 0.26% of arithmetic test questions leak into training). The
test split is drawn after the training split from the same stream, so the same seed gives
the same files byte for byte.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from circuitlab.core.config import require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_open, atomic_write_json
from circuitlab.cot.tasks import get_task
from circuitlab.cot.tasks.common import (
    Task,
    TokenBatch,
    compact,
    render_jsonl,
    row_keys,
    token_lengths,
)
from circuitlab.cot.tasks.modp import check_modulus

FORMATS = ("direct", "cot")
BOTH = "both"  # one draw written in both formats: the same problems, direct and CoT
CHUNK = 131_072  # examples drawn per batch: big enough to amortise numpy overheads


@dataclass(frozen=True)
class DataConfig:
    """One dataset: `num` training and `test_num` test examples of one task and size.

    format is direct, cot, or both (the same draw written in both formats). p is the
    modulus of arithmetic and equations (ignored by LIS and ED). test_num defaults to
    num // 10, the official 10:1 ratio.
    """

    task: str
    size: int
    format: str = "cot"
    num: int = 10_000
    test_num: int | None = None
    seed: int = 0
    p: int = 11

    def __post_init__(self) -> None:
        task = get_task(self.task)
        task.check_size(self.size)
        require(
            self.format in (*FORMATS, BOTH), f"--format {self.format!r}: use direct, cot or both"
        )
        require(self.num >= 1, f"--num {self.num}: ask for at least one example")
        require(self.tests >= 0, f"--test-num {self.test_num}: must be >= 0")
        if task.uses_modulus:
            check_modulus(self.p)

    @property
    def tests(self) -> int:
        return self.num // 10 if self.test_num is None else self.test_num

    @property
    def formats(self) -> tuple[str, ...]:
        return FORMATS if self.format == BOTH else (self.format,)


class Drawn(NamedTuple):
    split: str  # "train" or "test"
    batch: TokenBatch  # new examples whose questions were never drawn before
    duplicates: int  # draws dropped so far because their question was drawn before


def iter_batches(config: DataConfig) -> Iterator[Drawn]:
    """Yield batches of new distinct examples until there are num training and then
    test_num test examples.

    Memory stays bounded by one chunk of examples plus the set of questions seen.
    """
    task = get_task(config.task)
    rng = np.random.default_rng(config.seed)
    wanted = config.num + config.tests
    seen: set[bytes] = set()
    have = duplicates = stalled = 0
    while have < wanted:
        count = min(CHUNK, max(64, int((wanted - have) * 1.05)))
        batch = task.generate(rng, config.size, count, config.p)
        keys = batch.question_keys()
        _, fresh = np.unique(keys, return_index=True)  # first draw of each question
        fresh.sort()
        if seen:
            unseen = [key not in seen for key in keys[fresh].tolist()]
            fresh = fresh[np.array(unseen, dtype=bool)]
        fresh = fresh[: wanted - have]
        if not len(fresh):
            duplicates += len(batch)
            stalled += 1
            if stalled >= 3:
                raise CircuitlabError(
                    f"only {have} distinct {config.task} questions of size {config.size} turned "
                    f"up in {have + duplicates} draws; ask for fewer than {wanted} examples"
                )
            continue
        stalled = 0
        duplicates += int(fresh[-1]) + 1 - len(fresh)  # dropped draws up to the last one kept
        seen.update(keys[fresh].tolist())
        if len(fresh) < len(batch):
            batch = batch.select(fresh)
        to_train = max(0, min(len(batch), config.num - have))
        if to_train:
            yield Drawn("train", batch.select(slice(0, to_train)), duplicates)
        if to_train < len(batch):
            yield Drawn("test", batch.select(slice(to_train, len(batch))), duplicates)
        have += len(batch)


@dataclass
class Splits:
    train: TokenBatch
    test: TokenBatch
    duplicates: int  # draws dropped because their question had been drawn before


def generate_splits(config: DataConfig) -> Splits:
    """Both splits in memory (for tests and small datasets; `write_dataset` streams)."""
    parts: dict[str, list[TokenBatch]] = {"train": [], "test": []}
    duplicates = 0
    for drawn in iter_batches(config):
        parts[drawn.split].append(drawn.batch)
        duplicates = drawn.duplicates
    train = TokenBatch.concat(parts["train"])  # num >= 1, so never empty
    test = TokenBatch.concat(parts["test"]) if parts["test"] else train.select(slice(0, 0))
    return Splits(train, test, duplicates)


def output_paths(out: str | Path, fmt: str) -> dict[str, dict[str, Path]]:
    """Train, test and statistics files of each format, for output path `out` and --format.

    One format: OUT, OUT.test.jsonl, OUT.stats.json (with a .jsonl suffix dropped first).
    Both: OUT.direct.jsonl, OUT.direct.test.jsonl, OUT.direct.stats.json, and so for cot.
    """
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out

    def named(suffix: str) -> Path:
        return stem.with_name(stem.name + suffix)

    infixes = {f: f".{f}" for f in FORMATS} if fmt == BOTH else {fmt: ""}
    return {
        f: {
            "train": named(f"{infix}.jsonl"),
            "test": named(f"{infix}.test.jsonl"),
            "stats": named(f"{infix}.stats.json"),
        }
        for f, infix in infixes.items()
    }


@dataclass
class _Tally:
    """Statistics of one format, gathered batch by batch while the files are written."""

    count: int = 0
    tokens: int = 0
    max_tokens: int = 0
    max_steps: int = 0

    def add(self, task: Task, batch: TokenBatch, fmt: str) -> None:
        lengths = token_lengths(task, batch, fmt)
        self.count += len(batch)
        self.tokens += int(lengths.sum())
        self.max_tokens = max(self.max_tokens, int(lengths.max(initial=0)))
        if fmt == "cot":
            self.max_steps = max(self.max_steps, int(batch.step_counts().max(initial=0)))


@dataclass
class _AnswerCounts:
    """How often each answer occurs in the training split (the same in every format)."""

    counts: Counter = field(default_factory=Counter)
    ids: dict[bytes, np.ndarray] = field(default_factory=dict)

    def add(self, batch: TokenBatch) -> None:
        answers = compact(batch.answer)
        keys, first, counts = np.unique(row_keys(answers), return_index=True, return_counts=True)
        for key, row, n in zip(keys.tolist(), first, counts, strict=True):
            self.counts[key] += int(n)
            self.ids.setdefault(key, answers[row])


def write_dataset(
    config: DataConfig, out: str | Path, progress: Callable[[int], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Generate and write train, test and statistics files; return the stats by format.

    Batches are rendered and written as they are drawn. Each file is written atomically,
    so an interrupted or failed run leaves nothing half-written behind.
    """
    paths = output_paths(out, config.format)
    _check_writable(next(iter(paths.values()))["train"].parent)
    task = get_task(config.task)
    vocab = task.vocab(config.size, config.p)
    start = time.perf_counter()
    tallies = {fmt: _Tally() for fmt in config.formats}
    answers = _AnswerCounts()
    counts = {"train": 0, "test": 0}
    duplicates = 0
    with ExitStack() as stack:
        handles = {
            (fmt, split): stack.enter_context(atomic_open(paths[fmt][split]))
            for fmt in config.formats
            for split in ("train", "test")
        }
        for split, batch, duplicates_so_far in iter_batches(config):
            lines = render_jsonl(task, batch, vocab, config.size, config.formats, split)
            for fmt in config.formats:
                handles[fmt, split].write(lines[fmt])
                tallies[fmt].add(task, batch, fmt)
            if split == "train":
                answers.add(batch)
            counts[split] += len(batch)
            duplicates = duplicates_so_far
            if progress:
                progress(len(batch))
    seconds = time.perf_counter() - start
    common = answers.counts.most_common(20)
    all_stats = {}
    for fmt, tally in tallies.items():
        all_stats[fmt] = stats = {
            "task": config.task,
            "size": config.size,
            "format": fmt,
            "seed": config.seed,
            "p": config.p if task.uses_modulus else None,
            "num_train": counts["train"],
            "num_test": counts["test"],
            "duplicates_dropped": duplicates,
            "vocab_size": len(vocab),
            "max_tokens": tally.max_tokens,
            "max_tokens_with_eos": tally.max_tokens + 1,
            "mean_tokens": round(tally.tokens / tally.count, 2),
            "max_chain_steps": tally.max_steps,
            "distinct_answers": len(answers.counts),
            "answer_distribution": {vocab.decode(answers.ids[k]): n for k, n in common},
            "seconds": round(seconds, 3),
            "examples_per_second": round(tally.count / max(seconds, 1e-9)),
        }
        atomic_write_json(paths[fmt]["stats"], stats)
    return all_stats


def _check_writable(folder: Path) -> None:
    """Fail before spending minutes on generation if the output cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / ".circuitlab-write-check", "wb"):
            pass
        (folder / ".circuitlab-write-check").unlink()
    except OSError as e:
        raise CircuitlabError(f"cannot write to {folder}: {e.strerror or e}") from None
