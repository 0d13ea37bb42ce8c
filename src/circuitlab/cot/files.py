"""Training data read from files instead of generated: what `cot data` writes, or the
official generator's text files, so users can edit, corrupt or bring their own data.

Two inputs, one reader each:
- a `cot data` JSONL file (`OUT.jsonl`, or `OUT.cot.jsonl` / `OUT.direct.jsonl` of
  `--format both`): its test split is the `.test.jsonl` file beside it, and every row's
  task and format must be the run's;
- an official data folder (CoT_benchmark's `--file` output): `chain/` for CoT and
  `decoder/` for direct, each with `train_data.txt` and `test_data.txt`, one sequence a
  line. The official arithmetic/equation CoT test lines stop after the question's `=`, the
  answers are in `test_ans.txt`; such a test line is scored on its answer alone.

Every line is the official token text; a token outside the task's vocabulary, or a line
without the separator after the question, is a one-line error naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_jsonl, read_user_text
from circuitlab.cot.sequences import Sequences
from circuitlab.cot.tasks.common import EOS_ID, PAD_ID, Task, Vocab

DATA_FILE_HELP = (
    "Train on files instead of generating: a `cot data` JSONL (its .test.jsonl beside it "
    "is the test split) or an official data folder (chain/ or decoder/ with "
    "train_data.txt and test_data.txt)."
)


def read_data_files(spec: str, task: Task, vocab: Vocab, fmt: str) -> tuple[Sequences, Sequences]:
    """The (train, test) sequences of `spec`, tokenised with `vocab`."""
    path = Path(spec)
    if path.is_dir():
        folder = path / ("chain" if fmt == "cot" else "decoder")
        train = _text_lines(folder / "train_data.txt")
        test = _text_lines(folder / "test_data.txt")
        answers = folder / "test_ans.txt"
        if answers.exists():
            extra = _text_lines(answers)
            if len(extra) != len(test):
                raise CircuitlabError(f"{answers}: {len(extra)} answers for {len(test)} tests")
            test = [(where, f"{line} {answer}") for (where, line), (_, answer) in
                    zip(test, extra, strict=True)]  # fmt: skip
    elif path.suffix == ".jsonl":
        test_path = path.with_name(path.name.removesuffix(".jsonl") + ".test.jsonl")
        train = _jsonl_lines(path, task, fmt)
        test = _jsonl_lines(test_path, task, fmt)
    else:
        raise CircuitlabError(
            f"--data {spec}: give a `cot data` .jsonl file or an official data folder"
        )
    if not train or not test:
        raise CircuitlabError(f"--data {spec}: the train and the test split need a line each")
    return _sequences(train, task, vocab), _sequences(test, task, vocab)


def _text_lines(path: Path) -> list[tuple[str, str]]:
    text = read_user_text(path)
    return [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _jsonl_lines(path: Path, task: Task, fmt: str) -> list[tuple[str, str]]:
    if not path.exists():
        raise CircuitlabError(f"{path} does not exist (the test split of the --data file)")
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        where = f"{path}:{n}"
        if row.get("task") != task.name or row.get("format") != fmt:
            raise CircuitlabError(
                f"{where}: a {row.get('task')} {row.get('format')} row; this run trains "
                f"{task.name} {fmt}"
            )
        if not isinstance(row.get("text"), str):
            raise CircuitlabError(f"{where}: no 'text'")
        out.append((where, row["text"]))
    return out


def _sequences(lines: list[tuple[str, str]], task: Task, vocab: Vocab) -> Sequences:
    index = {token: i for i, token in enumerate(vocab.tokens)}
    rows, prompts = [], []
    for where, line in lines:
        tokens = line.split()
        unknown = [t for t in tokens if t not in index]
        if unknown:
            raise CircuitlabError(
                f"{where}: token {unknown[0]!r} is not in the {task.name} vocabulary"
            )
        if task.format.head not in tokens:
            raise CircuitlabError(f"{where}: no {task.format.head!r} after the question")
        prompts.append(tokens.index(task.format.head) + 1)
        rows.append([index[t] for t in tokens] + [EOS_ID])
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    return Sequences(ids, lengths, np.array(prompts, dtype=np.int64))
