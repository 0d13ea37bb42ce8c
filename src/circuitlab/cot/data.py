"""Datasets of one task and size: deduplicated train/test splits, JSON lines, statistics.

Questions are deduplicated across both splits (the official generator deduplicates whole
sequences, which let about 0.26% of arithmetic test questions leak into training). The
test split is drawn after the training split from the same stream, so the same seed gives
the same files byte for byte.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_files
from circuitlab.cot.corrupt import corrupt_steps
from circuitlab.cot.tasks import TASKS, get_task, lis
from circuitlab.cot.tasks.common import (
    Task,
    TokenBatch,
    compact,
    iter_jsonl,
    row_keys,
    token_lengths,
)
from circuitlab.cot.tasks.modp import check_modulus

FORMATS = ("direct", "cot")
TASK_HELP = f"One of: {', '.join(TASKS)}."
SIZE_HELP = (
    "Problem size: operators (arithmetic), variables (equation), sequence length (lis), "
    "first-string length (ed). Paper: 4-6, 3-5, 50/80/100, 12/16/20."
)
P_HELP = "Prime modulus for arithmetic and equation."
VALUES_HELP = "LIS: questions use numbers below this (official 250; at least 2*size+1)."
UNDER_HELP = (
    "The official --under training set: int(k / (1 + ... + size) * num) problems of each "
    "size k < size, whole chains deduplicated, the rest at full size (official: arithmetic)."
)
CORRUPT_HELP = (
    "Fraction of training chains given one wrong step (a number changed, checked wrong by "
    "the task's verifier), to measure how CoT degrades; the test split stays clean."
)
BOTH = "both"  # one draw written in both formats: the same problems, direct and CoT
CHUNK = 131_072  # examples drawn per batch: big enough to amortise numpy overheads


@dataclass(frozen=True)
class DataConfig:
    """One dataset: `num` training and `test_num` test examples of one task and size.

    format is direct, cot, or both (the same draw written in both formats). p is the
    modulus of arithmetic and equations, values the number range of LIS (official 250);
    ED takes neither. test_num defaults to num // 10, the official 10:1 ratio.
    """

    task: str = option(help=TASK_HELP)
    size: int = option(help=SIZE_HELP)
    format: str = option(
        "cot",
        help="direct (question -> answer), cot (with chain), or both (the same draw, written "
        "as OUT.direct.jsonl and OUT.cot.jsonl).",
    )
    num: int = option(10_000, "Training examples (the paper uses 1e6).")
    test_num: int | None = option(
        None, "Test examples, never sharing a question with training \\[default: num/10]."
    )
    seed: int = option(0, "Same seed, same files.")
    p: int = option(11, P_HELP)
    values: int = option(lis.NUMBER_RANGE, VALUES_HELP)
    under: bool = option(False, UNDER_HELP)
    corrupt_rate: float = option(0.0, CORRUPT_HELP)

    def __post_init__(self) -> None:
        task = get_task(self.task)
        task.check_size(self.size)
        require(
            self.format in (*FORMATS, BOTH), f"--format {self.format!r}: use direct, cot or both"
        )
        require(self.num >= 1, f"--num {self.num}: ask for at least one example")
        require(self.tests >= 0, f"--test-num {self.test_num}: must be >= 0")
        require(
            0.0 <= self.corrupt_rate <= 1.0,
            f"--corrupt-rate {self.corrupt_rate}: a fraction of the chains, in [0, 1]",
        )
        require(
            not self.corrupt_rate or self.format != "direct",
            "--corrupt-rate changes chains: use it with --format cot or both",
        )
        if task.uses_modulus:
            check_modulus(self.p)
        if task.name == "lis":
            lis.number_range(self.size, self.values)
        if self.under:
            vocab = task.vocab(self.size, self.task_arg)
            sizes = range(task.min_size, self.size)
            require(
                all(task.vocab(k, self.task_arg) == vocab for k in sizes),
                f"--under needs one vocabulary for all sizes, which {self.task} does not have",
            )

    @property
    def task_arg(self) -> int:
        """The last argument of the task's functions: p for arithmetic and equations, the
        number range for LIS (ED ignores it)."""
        return self.values if self.task == "lis" else self.p

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
    corrupted: int = 0  # chains of this batch given a wrong step (corrupt_rate)


def iter_batches(config: DataConfig) -> Iterator[Drawn]:
    """Yield batches of new distinct examples until there are num training and then
    test_num test examples; with corrupt_rate, training chains get wrong steps.

    Memory stays bounded by one chunk of examples plus the set of questions seen, which is
    only kept when another chunk has to be drawn; `under` holds both splits instead, since
    its training set is chosen after the test split is known.
    """
    if not config.corrupt_rate:
        yield from _iter_clean(config)
        return
    task = get_task(config.task)
    rng = np.random.default_rng([config.seed, 104729])  # its own stream: the draw is unchanged
    for drawn in _iter_clean(config):
        if drawn.split == "train":
            batch, count = corrupt_steps(
                task, drawn.batch, config.size, config.task_arg, config.corrupt_rate, rng
            )
            drawn = drawn._replace(batch=batch, corrupted=count)
        yield drawn


def _iter_clean(config: DataConfig) -> Iterator[Drawn]:
    if not config.under:
        yield from _iter_distinct(config)
        return
    parts: dict[str, list[TokenBatch]] = {"train": [], "test": []}
    duplicates = 0
    for drawn in _iter_distinct(config):
        parts[drawn.split].append(drawn.batch)
        duplicates = drawn.duplicates
    full = TokenBatch.concat(parts["train"])
    test = TokenBatch.concat(parts["test"]) if parts["test"] else full.select(slice(0, 0))
    yield Drawn("train", official_under(full, test, config), duplicates)
    if len(test):
        yield Drawn("test", test, duplicates)


def official_under(full: TokenBatch, test: TokenBatch, config: DataConfig) -> TokenBatch:
    """The official generator's `--under` training set (arithmetic/data.py): for each size
    k = 1..n it draws int(k / sum(1..n) * num) problems into a set of whole chains, then
    fills the set up to `num` with size-n problems. At n = 4 that is about 67% size 4, 29%
    size 3, 3.8% size 2 and 0.05% size 1, with no repeated chain.

    `full` (the plain draw of `num` size-n problems, none sharing a question with `test`)
    supplies the size-n part and the filling, so the test split stays the plain run's.
    """
    task = get_task(config.task)
    sizes = list(range(task.min_size, config.size + 1))
    total = sum(sizes)
    rng = np.random.default_rng([config.seed, 7919])
    smaller = [
        task.generate(rng, k, int(k / total * config.num), config.task_arg) for k in sizes[:-1]
    ]
    candidates = TokenBatch.concat([*[b for b in smaller if len(b)], full])
    # the size-n draws and the filling are one stream (the official loop draws size n until
    # the set is full), so taking distinct chains in order until `num` is the same rule
    test_questions = set(question_keys(test))
    chains = row_keys(
        np.concatenate(
            [candidates.question, candidates.steps.reshape(len(candidates), -1), candidates.answer],
            axis=1,
        )
    ).tolist()
    seen: set[bytes] = set()
    keep: list[int] = []
    for row, (chain, question) in enumerate(zip(chains, question_keys(candidates), strict=True)):
        if len(keep) == config.num:
            break
        if chain not in seen and question not in test_questions:
            seen.add(chain)
            keep.append(row)
    return candidates.select(np.array(keep))


def question_keys(batch: TokenBatch) -> list[bytes]:
    """Each question's tokens, independent of the batch's padded width."""
    return [row[row != 0].astype(np.int16).tobytes() for row in batch.question]


def _iter_distinct(config: DataConfig) -> Iterator[Drawn]:
    task = get_task(config.task)
    rng = np.random.default_rng(config.seed)
    wanted = config.num + config.tests
    seen: set[bytes] = set()
    have = duplicates = stalled = 0
    while have < wanted:
        count = min(CHUNK, max(64, int((wanted - have) * 1.05)))
        batch = task.generate(rng, config.size, count, config.task_arg)
        questions = compact(batch.question)
        fresh = first_draws(questions)  # first draw of each question
        if seen:
            unseen = [key not in seen for key in _set_keys(questions[fresh])]
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
        if have + len(fresh) < wanted:  # another chunk follows: remember these questions
            seen.update(_set_keys(questions[fresh]))
        if len(fresh) < len(batch):
            batch = batch.select(fresh)
        to_train = max(0, min(len(batch), config.num - have))
        if to_train:
            yield Drawn("train", batch.select(slice(0, to_train)), duplicates)
        if to_train < len(batch):
            yield Drawn("test", batch.select(slice(to_train, len(batch))), duplicates)
        have += len(batch)


def first_draws(rows: np.ndarray) -> np.ndarray:
    """Ascending indices of the first of each group of equal rows of a 2-d id array.

    Rows are hashed to 64-bit integers and only rows whose hash is shared are compared in
    full, so the usual case (a few repeats in a hundred thousand draws) costs one sort of
    integers instead of a sort of whole rows. Exact: equal hashes are never trusted.
    """
    hashes = _row_hashes(rows)
    ordered = np.sort(hashes)
    shared = ordered[1:][ordered[1:] == ordered[:-1]]
    everything = np.arange(len(rows))
    if not shared.size:
        return everything
    candidates = np.flatnonzero(np.isin(hashes, shared))
    first: dict[bytes, int] = {}
    repeats = [
        i
        for i, key in zip(candidates.tolist(), row_keys(rows[candidates]).tolist(), strict=True)
        if first.setdefault(key, i) != i
    ]
    return np.delete(everything, repeats)


def _row_hashes(rows: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each row's bytes (eight bytes per vectorised step)."""
    row_bytes = rows.shape[1] * rows.dtype.itemsize
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), row_bytes)
    words = np.zeros((len(rows), -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
    words[:, : raw.shape[1]] = raw
    hashes = np.full(len(rows), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for word in words.view(np.uint64).T:
        hashes ^= word
        hashes *= np.uint64(0xBF58476D1CE4E5B9)
        hashes ^= hashes >> np.uint64(31)
    return hashes


def _set_keys(questions: np.ndarray) -> list[bytes]:
    """Keys of compacted questions for the set of questions seen in earlier chunks.

    Trailing zero bytes (padding) are stripped: chunks compact to their own widest
    question, and the same question must give the same key in every chunk.
    """
    return [key.rstrip(b"\0") for key in row_keys(questions).tolist()]


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
        if fmt == "cot" and len(batch):
            self.max_steps = max(self.max_steps, int(batch.step_counts().max()))


@dataclass
class _AnswerCounts:
    """How often each answer occurs in the training split (the same in every format)."""

    counts: Counter = field(default_factory=Counter)
    ids: dict[bytes, np.ndarray] = field(default_factory=dict)

    def add(self, batch: TokenBatch) -> None:
        answers = compact(batch.answer)
        keys = row_keys(answers)
        _, first, counts = np.unique(_sortable(keys), return_index=True, return_counts=True)
        for key, row, n in zip(keys[first].tolist(), first, counts, strict=True):
            self.counts[key] += int(n)
            self.ids.setdefault(key, answers[row])


def _sortable(keys: np.ndarray) -> np.ndarray:
    """Row keys as big-endian integers where they fit in 8 bytes: the same order as the
    keys' bytes (so the same first-seen order of answers, hence the same ties in the
    statistics), but sorted by a fast integer sort instead of a byte-string one."""
    if keys.dtype.itemsize > 8:
        return keys
    raw = np.zeros((len(keys), 8), dtype=np.uint8)
    raw[:, : keys.dtype.itemsize] = keys.view(np.uint8).reshape(len(keys), keys.dtype.itemsize)
    return raw.view(">u8").ravel()


def write_dataset(
    config: DataConfig, out: str | Path, progress: Callable[[int], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Generate and write train, test and statistics files; return the stats by format.

    Batches are rendered and written as they are drawn, into temporary files that are
    renamed into place together at the end: an interrupted or failed run leaves neither a
    half-written file nor a train split without its test split and statistics.
    """
    paths = output_paths(out, config.format)
    _check_writable(next(iter(paths.values()))["train"].parent)
    task = get_task(config.task)
    vocab = task.vocab(config.size, config.task_arg)
    start = time.perf_counter()
    tallies = {fmt: _Tally() for fmt in config.formats}
    answers = _AnswerCounts()
    counts = {"train": 0, "test": 0}
    duplicates = 0
    every = [path for files in paths.values() for path in files.values()]
    with atomic_files(every) as files:
        handles = {
            (fmt, split): files[paths[fmt][split]]
            for fmt in config.formats
            for split in ("train", "test")
        }
        corrupted = 0
        for split, batch, duplicates_so_far, bad in iter_batches(config):
            corrupted += bad
            for piece in iter_jsonl(task, batch, vocab, config.size, config.formats, split):
                for fmt, text in piece.items():
                    handles[fmt, split].write(text)
            for fmt in config.formats:
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
                "values": config.values if task.name == "lis" else None,
                "under": config.under,
                "corrupt_rate": config.corrupt_rate,
                "corrupted_chains": corrupted if fmt == "cot" else 0,
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
            files[paths[fmt]["stats"]].write((json.dumps(stats, indent=2) + "\n").encode())
    return all_stats


def _check_writable(folder: Path) -> None:
    """Fail before spending minutes on generation if the output cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # an anonymous temporary file: nothing to sync or rename, nothing left behind
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CircuitlabError(f"cannot write to {folder}: {e.strerror or e}") from None
