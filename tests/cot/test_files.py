from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.data import write_dataset
from circuitlab.cot.tasks import get_task
from circuitlab.cot.train import TrainConfig, prepare


def test_a_cot_data_file_trains_on_exactly_what_generation_would(tmp_path: Path) -> None:
    config = TrainConfig(task="lis", size=6, format="cot", num=120, test_num=12, seed=4)
    write_dataset(config.data, tmp_path / "l6.jsonl")
    from_file = prepare(TrainConfig(**{**_fields(config), "data_file": str(tmp_path / "l6.jsonl")}))
    generated = prepare(config)
    for split in ("train", "test"):
        a, b = getattr(from_file, split), getattr(generated, split)
        assert (a.lengths == b.lengths).all() and (a.prompt == b.prompt).all()
        assert (a.ids[:, : a.ids.shape[1]] == b.ids[:, : a.ids.shape[1]]).all()


def _fields(config: TrainConfig) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_an_official_data_folder_trains_through_the_cli(tmp_path: Path) -> None:
    """The official layout: chain/train_data.txt whole sequences, test_data.txt questions up
    to `=`, the answers in test_ans.txt."""
    task = get_task("arithmetic")
    config = TrainConfig(task="arithmetic", size=2, num=60, test_num=6, seed=1)
    examples = task.to_examples(prepare_batch(config), 2, config.data.task_arg)
    chain = tmp_path / "Data" / "chain"
    chain.mkdir(parents=True)
    (chain / "train_data.txt").write_text(
        "".join(task.text(e, "cot") + "\n" for e in examples[:54])
    )
    (chain / "test_data.txt").write_text("".join(f"{e.question} =\n" for e in examples[54:]))
    (chain / "test_ans.txt").write_text("".join(f"{e.answer}\n" for e in examples[54:]))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "circuitlab", "cot", "train", "--task", "arithmetic", "--size",
         "2", "--data", str(tmp_path / "Data"), "--layers", "1", "--d-model", "16", "--heads",
         "2", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["examples"] == 6
    prepared = prepare(TrainConfig(task="arithmetic", size=2, data_file=str(tmp_path / "Data")))
    assert len(prepared.train) == 54
    # a test line holds its question, `=`, then the answer alone
    assert (prepared.test.lengths == prepared.test.prompt + 2).all()


def prepare_batch(config: TrainConfig):
    from circuitlab.cot.data import generate_splits

    return generate_splits(config.data).train


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            lambda d: (d / "x.jsonl").write_text(
                '{"task": "lis", "format": "cot", "text": "1 = 1"}\n'
            ),
            "a lis cot row; this run trains arithmetic cot",
        ),
        (
            lambda d: (d / "x.jsonl").write_text(
                '{"task": "arithmetic", "format": "cot", "text": "1 + x = 2"}\n'
            ),
            "token 'x' is not in the arithmetic vocabulary",
        ),
        (
            lambda d: (d / "x.jsonl").write_text(
                '{"task": "arithmetic", "format": "cot", "text": "1 + 2"}\n'
            ),
            "no '=' after the question",
        ),
        (lambda d: (d / "x.txt").write_text("1 + 2 = 3\n"), "give a `cot data` .jsonl file"),
    ],
)
def test_bad_data_files_are_one_line_errors(tmp_path: Path, write, message) -> None:
    write(tmp_path)
    (tmp_path / "x.test.jsonl").write_text(
        '{"task": "arithmetic", "format": "cot", "text": "1 + 2 = 3"}\n'
    )
    name = "x.txt" if (tmp_path / "x.txt").exists() else "x.jsonl"
    with pytest.raises(CircuitlabError, match=message):
        prepare(TrainConfig(task="arithmetic", size=2, data_file=str(tmp_path / name)))


def test_data_with_generation_settings_is_an_error() -> None:
    with pytest.raises(CircuitlabError, match="--data trains on the file as it is"):
        TrainConfig(task="arithmetic", size=2, data_file="x.jsonl", under=True)


def test_a_data_file_run_may_generate_as_long_as_its_model(tmp_path: Path) -> None:
    """Official CoT test lines hold the answer alone: the generation budget must not be
    measured on them, or a chain is cut before its answer."""
    from circuitlab.cot.model import GPT
    from circuitlab.cot.train import generation_budget

    task = get_task("arithmetic")
    config = TrainConfig(task="arithmetic", size=4, num=40, test_num=4, seed=2)
    examples = task.to_examples(prepare_batch(config), 4, config.data.task_arg)
    chain = tmp_path / "Data" / "chain"
    chain.mkdir(parents=True)
    (chain / "train_data.txt").write_text("".join(task.text(e, "cot") + "\n" for e in examples))
    (chain / "test_data.txt").write_text(f"{examples[0].question} =\n")
    (chain / "test_ans.txt").write_text(f"{examples[0].answer}\n")
    on_files = TrainConfig(task="arithmetic", size=4, data_file=str(tmp_path / "Data"))
    prepared = prepare(on_files)
    model = GPT(prepared.model_config)
    longest = int((prepared.train.lengths - prepared.train.prompt).max())
    assert int((prepared.test.lengths - prepared.test.prompt).max()) + 8 < longest
    assert generation_budget(on_files, model) == model.config.max_len >= longest
    assert generation_budget(config, model) is None  # generated data: the references' own
