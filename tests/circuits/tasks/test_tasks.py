"""The three task generators and user JSONL tasks, on the embedded SmolLM2 tokenizer."""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import pytest

from circuitlab.circuits.tasks import TASKS, make_task
from circuitlab.circuits.tasks.common import CircuitTask, single_tokens
from circuitlab.circuits.tasks.greater_than import digit_mode, make_greater_than
from circuitlab.circuits.tasks.ioi import NAMES
from circuitlab.circuits.tasks.jsonl import load_jsonl_task
from circuitlab.core.errors import CircuitlabError


def lengths(tokenizer: Any, texts: tuple[str, ...]) -> list[int]:
    return [len(tokenizer(t).input_ids) for t in texts]


@pytest.mark.parametrize("name", list(TASKS))
def test_tasks_are_seeded_paired_and_token_aligned(tokenizer: Any, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = make_task(name, tokenizer, n=40, seed=1)
        again = make_task(name, tokenizer, n=40, seed=1)
        other = make_task(name, tokenizer, n=40, seed=2)
    assert isinstance(task, CircuitTask) and len(task) == 40
    assert task == again and task.positives != other.positives
    assert len(set(task.positives)) > 30
    # resample ablation needs each negative to have its positive's token count
    assert lengths(tokenizer, task.positives) == lengths(tokenizer, task.negatives)
    assert all(p != n for p, n in zip(task.positives, task.negatives, strict=True))
    assert task.head(5).positives == task.positives[:5]


def test_ioi_answers_are_the_indirect_object(tokenizer: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = make_task("ioi", tokenizer, n=30, seed=0)
    assert task.metric == "logit_diff"
    for positive, negative, good, bad in zip(
        task.positives, task.negatives, task.good, task.bad, strict=True
    ):
        io, s = tokenizer.decode(good).strip(), tokenizer.decode(bad).strip()
        words = re.findall(r"\w+", positive)
        assert words.count(io) == 1 and words.count(s) == 2  # IO once, S twice
        assert positive.rstrip().endswith("to")
        neg_words = re.findall(r"\w+", negative)
        assert io not in neg_words and s not in neg_words  # ABC: fresh names only
    # both orders occur
    firsts = [re.findall(r"\w+", p) for p in task.positives]
    assert any(tokenizer.decode(g).strip() in w[:3] for g, w in zip(task.good, firsts, strict=True))


def test_multi_token_names_are_dropped_with_a_warning(tokenizer: Any) -> None:
    with pytest.warns(UserWarning, match="not single tokens"):
        kept = single_tokens(tokenizer, ["Mary", "Xavierleopold", "John"], what="names")
    assert set(kept) == {"Mary", "John"}
    assert all(len(tokenizer(" " + n).input_ids) == 1 for n in kept)
    with pytest.warns(UserWarning), pytest.raises(CircuitlabError, match="only 0"):
        single_tokens(tokenizer, ["Qwxyzzyplonk"], what="names")
    with pytest.warns(UserWarning, match="IOI names"):
        make_task("ioi", tokenizer, n=2)
    assert len(NAMES) > 90


def test_greater_than_uses_digits_on_smollm2(tokenizer: Any) -> None:
    mode, ids = digit_mode(tokenizer)
    assert mode == "one" and len(ids) == 10
    task = make_greater_than(tokenizer, n=30, seed=0)
    assert task.metric == "prob_diff"
    for positive, negative, good, bad in zip(
        task.positives, task.negatives, task.good, task.bad, strict=True
    ):
        yy = int(re.search(r"year \d\d(\d\d) to", positive).group(1))
        assert re.search(r"year \d\d01 to", negative)
        digits_up = {int(tokenizer.decode([t])) for t in good}
        digits_down = {int(tokenizer.decode([t])) for t in bad}
        assert digits_up == set(range(yy // 10 + 1, 10))
        assert digits_down == set(range(yy // 10))


class TwoDigitTokenizer:
    """A GPT-2-like toy tokenizer: words, and years split into two-digit tokens."""

    bos_token_id = None
    pad_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<pad>": 0}

    def __call__(self, text: str) -> Any:
        pieces = re.findall(r" ?[A-Za-z]+| ?\d\d|\d| ?[^\sA-Za-z\d]", text)
        ids = [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]
        return type("Out", (), {"input_ids": ids})()


def test_greater_than_uses_two_digit_years_where_the_tokenizer_has_them() -> None:
    tok = TwoDigitTokenizer()
    task = make_greater_than(tok, n=20, seed=0)
    assert "mass on years > YY" in task.description
    for positive, good, bad in zip(task.positives, task.good, task.bad, strict=True):
        yy = int(re.search(r"year \d\d(\d\d) to", positive).group(1))
        assert len(good) == 99 - yy and len(bad) == yy + 1
        assert tok("32").input_ids[0] in (good if yy < 32 else bad)


def test_docstring_answer_is_the_next_documented_argument(tokenizer: Any) -> None:
    task = make_task("docstring", tokenizer, n=20, seed=0)
    for positive, negative, good, bad in zip(
        task.positives, task.negatives, task.good, task.bad, strict=True
    ):
        args = re.search(r"\(self, (.*)\):", positive).group(1).split(", ")
        documented = re.findall(r":param (\w+):", positive)
        assert len(args) == 6 and documented == args[2:4]
        assert tokenizer.decode(good).strip() == args[4]
        assert sorted(tokenizer.decode([b]).strip() for b in bad) == sorted(
            a for a in args if a != args[4]
        )
        assert positive.endswith(":param") and negative.endswith(":param")
        neg_args = re.search(r"\(self, (.*)\):", negative).group(1).split(", ")
        assert not set(neg_args) & set(args)  # random_random: all names replaced
        assert not set(re.findall(r":param (\w+):", negative)) & set(neg_args)


def test_jsonl_task(tmp_path, tokenizer: Any) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        {
            "prompt": "When Mary and John went to the store, John gave a drink to",
            "answer": " Mary",
            "negative": "When Anna and Paul went to the store, Kate gave a drink to",
            "wrong": [" John"],
        },
        {
            "prompt": "Then, Tom and Lisa met. Lisa waved to",
            "answer": " Tom",
            "negative": "Then, Sam and Emma met. Kate waved to",
            "wrong": [" Lisa"],
        },
        {
            "prompt": "The capital of France is",
            "answer": " Parisxqzt",
            "negative": "The capital of Spain is",
            "wrong": [" Rome"],
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning, match="1 line"):
        task = load_jsonl_task(path, tokenizer)
    assert task.name == "mine" and task.metric == "logit_diff" and len(task) == 2
    assert task.good[0] == (tokenizer(" Mary").input_ids[0],)
    assert task.bad[1] == (tokenizer(" Lisa").input_ids[0],)
    assert make_task(str(path), tokenizer, n=1).positives == task.positives[:1]

    no_wrong = tmp_path / "plain.jsonl"
    no_wrong.write_text(json.dumps({k: v for k, v in lines[0].items() if k != "wrong"}) + "\n")
    assert load_jsonl_task(no_wrong, tokenizer).metric == "logprob"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "answer": " b"}\n', "lacks negative"),
        ('{"prompt": "a", "answer": " b", "negative": "c", "wrong": " d"}\n', "list of strings"),
        ("[1, 2]\n", "not a JSON object"),
        ("", "no prompt pairs"),
    ],
)
def test_bad_jsonl_is_a_clear_error(tmp_path, tokenizer: Any, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CircuitlabError, match=message):
        load_jsonl_task(path, tokenizer)


def test_unknown_task_is_a_clear_error(tokenizer: Any) -> None:
    with pytest.raises(CircuitlabError, match="unknown task"):
        make_task("sorting", tokenizer)
    with pytest.raises(CircuitlabError, match="at least one"):
        make_task("ioi", tokenizer, n=0)
