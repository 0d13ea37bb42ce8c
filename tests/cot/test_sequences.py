from __future__ import annotations

import numpy as np
import pytest

from circuitlab.cot.data import DataConfig, generate_splits
from circuitlab.cot.sequences import IGNORE, build_sequences, loss_labels
from circuitlab.cot.tasks import TASKS, get_task
from circuitlab.cot.tasks.common import EOS_ID

SIZES = {"arithmetic": 3, "equation": 2, "lis": 6, "ed": 5}


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("fmt", ["direct", "cot"])
def test_sequences_are_the_official_text_plus_eos(name: str, fmt: str) -> None:
    task, size = get_task(name), SIZES[name]
    config = DataConfig(name, size, num=40, test_num=0, seed=3)
    vocab = task.vocab(size, config.task_arg)
    batch = generate_splits(config).train
    seqs = build_sequences(task, batch, vocab, fmt)
    for i, example in enumerate(task.to_examples(batch, size, config.task_arg)):
        expected = [*vocab.encode(task.text(example, fmt)), EOS_ID]
        assert seqs.ids[i, : seqs.lengths[i]].tolist() == expected
        assert not seqs.ids[i, seqs.lengths[i] :].any()
        prompt = vocab.decode(seqs.ids[i, : seqs.prompt[i]])
        assert prompt == f"{example.question} {task.format.head}"


def test_loss_mask_excludes_question_and_padding() -> None:
    #            q   q   =   a   b  eos pad
    ids = np.array([[5, 6, 7, 8, 9, 1, 0]])
    labels = loss_labels(ids, lengths=np.array([6]), prompt=np.array([3]))
    # position t predicts token t+1: only targets 8, 9, eos (positions 2..4) count
    assert labels.tolist() == [[IGNORE, IGNORE, 8, 9, 1, IGNORE, IGNORE]]


def test_loss_mask_on_real_data_covers_exactly_the_continuation() -> None:
    task = get_task("arithmetic")
    vocab = task.vocab(2, 11)
    batch = generate_splits(DataConfig("arithmetic", 2, num=20, test_num=0)).train
    seqs = build_sequences(task, batch, vocab, "cot")
    labels = loss_labels(seqs.ids, seqs.lengths, seqs.prompt)
    counted = (labels != IGNORE).sum(axis=1)
    assert (counted == seqs.lengths - seqs.prompt).all()
    for label in labels:
        kept = label[label != IGNORE]
        assert kept[-1] == EOS_ID
        assert "=" not in vocab.decode(kept[:1])  # the first target follows the first '='
