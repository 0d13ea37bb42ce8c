import json

import numpy as np
import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.data import (
    DataConfig,
    _set_keys,
    first_draws,
    generate_splits,
    output_paths,
    write_dataset,
)
from circuitlab.cot.tasks import TASKS, get_task
from circuitlab.cot.tasks.common import row_keys


def test_data_under_writes_the_official_mix_and_an_unchanged_test_split(tmp_path):
    """`cot data --under` writes what `cot train --under` trains on (official_under)."""
    base = dict(task="arithmetic", size=3, p=97, num=600, test_num=60, seed=2)
    write_dataset(DataConfig(**base, under=True), tmp_path / "u.jsonl")
    write_dataset(DataConfig(**base), tmp_path / "plain.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    steps = np.bincount([len(r["chain"]) for r in rows], minlength=3)
    assert len(rows) == 600 and steps[1] == int(2 / 6 * 600) and 0 < steps[0] <= 100
    assert len({r["text"] for r in rows}) == 600
    test = (tmp_path / "u.test.jsonl").read_text()
    assert test == (tmp_path / "plain.test.jsonl").read_text()
    assert not {r["question"] for r in rows} & {
        json.loads(x)["question"] for x in test.split("\n") if x
    }
    assert json.loads((tmp_path / "u.stats.json").read_text())["under"] is True


@pytest.mark.parametrize("task", list(TASKS))
def test_splits_are_disjoint_by_question_and_verify(task, tmp_path):
    size = {"arithmetic": 3, "equation": 2, "lis": 8, "ed": 5}[task]
    config = DataConfig(task=task, size=size, num=300, test_num=100, seed=1)
    stats = write_dataset(config, tmp_path / "d.jsonl")["cot"]
    paths = output_paths(tmp_path / "d.jsonl", "cot")["cot"]
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert len(train) == 300 and len(test) == 100
    questions = [r["question"] for r in train + test]
    assert len(set(questions)) == 400
    t = get_task(task)
    for r in train[:50] + test[:50]:
        assert t.verify(r["question"], r["chain"], r["answer"], 11).valid
        assert r["text"] == t.format.join(r["question"], r["chain"], r["answer"])
    assert {r["split"] for r in test} == {"test"}
    assert stats["num_train"] == 300 and stats["max_tokens"] == max(
        len(r["text"].split()) for r in train + test
    )
    assert sum(stats["answer_distribution"].values()) <= 300
    assert json.loads(paths["stats"].read_text()) == stats


def test_same_seed_same_files(tmp_path):
    for name in ("a", "b"):
        write_dataset(DataConfig(task="arithmetic", size=4, num=500, seed=5), tmp_path / name)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.test.jsonl").read_bytes() == (tmp_path / "b.test.jsonl").read_bytes()


def test_both_formats_hold_the_same_problems(tmp_path):
    stats = write_dataset(
        DataConfig(task="lis", size=10, format="both", num=50, seed=2), tmp_path / "d.jsonl"
    )
    paths = output_paths(tmp_path / "d.jsonl", "both")
    assert paths["cot"]["train"].name == "d.cot.jsonl"
    direct, cot = (
        [json.loads(x) for x in paths[f]["train"].read_text().splitlines()]
        for f in ("direct", "cot")
    )
    for d, c in zip(direct, cot, strict=True):
        assert (d["question"], d["answer"]) == (c["question"], c["answer"])
        assert d["chain"] == [] and len(c["chain"]) == 10
        assert d["text"] == f"{d['question']} <sep> {d['answer']}"
    assert stats["direct"]["max_tokens"] == 12  # 10 numbers, <sep>, answer
    assert stats["cot"]["max_tokens"] == 23  # and 10 dp values and a second <sep>
    # the same draw as a single-format run with the same seed
    write_dataset(
        DataConfig(task="lis", size=10, format="cot", num=50, seed=2), tmp_path / "single.jsonl"
    )
    assert (tmp_path / "single.jsonl").read_bytes() == paths["cot"]["train"].read_bytes()


def test_asking_for_more_distinct_questions_than_exist_is_an_error():
    # one operator over Z_5: 5 * 5 * 4 operand/operator choices at most
    with pytest.raises(CircuitlabError, match="distinct"):
        generate_splits(DataConfig(task="arithmetic", size=1, num=500, p=5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "sorting", "size": 3}, "unknown task"),
        ({"task": "lis", "size": 0}, "out of range"),
        ({"task": "arithmetic", "size": 4, "p": 12}, "not prime"),
        ({"task": "arithmetic", "size": 4, "p": 1000003}, "above 1000"),  # O(p^2) tables
        ({"task": "equation", "size": 3, "p": 1009}, "above 1000"),
        ({"task": "arithmetic", "size": 4, "num": 0}, "at least one"),
        ({"task": "arithmetic", "size": 4, "format": "all"}, "direct, cot or both"),
    ],
)
def test_bad_configs_are_user_errors(kwargs, message):
    with pytest.raises(CircuitlabError, match=message):
        DataConfig(**kwargs)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("width", [1, 3, 13])
def test_first_draws_are_the_first_of_each_distinct_row(dtype, width):
    rng = np.random.default_rng(width)
    rows = rng.integers(0, 3, size=(5000, width)).astype(dtype)  # many repeats
    _, first = np.unique(row_keys(rows), return_index=True)
    assert np.array_equal(first_draws(rows), np.sort(first))
    distinct = np.arange(40, dtype=dtype).reshape(20, 2)
    assert np.array_equal(first_draws(distinct), np.arange(20))


def test_seen_question_keys_do_not_depend_on_the_padding_width():
    # chunks compact their questions to their own widest one
    narrow = np.array([[3, 4], [5, 256]], dtype=np.int16)
    wide = np.array([[3, 4, 0, 0], [5, 256, 0, 0]], dtype=np.int16)
    assert _set_keys(narrow) == _set_keys(wide)
    others = np.array([[3, 4, 2], [5, 0, 0], [3, 0, 0], [256, 0, 0]], dtype=np.int16)
    assert len(set(_set_keys(others)) | set(_set_keys(wide))) == 6
