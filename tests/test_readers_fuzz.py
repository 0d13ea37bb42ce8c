"""Every reader of a user's file, fed anything: it returns a result or raises one
CircuitlabError whose message is one line, never another exception (which the CLI would
show as a traceback). In-process calls of the readers, fast, plus one real CLI run per
reader for the exit status 2."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitlab.analog.corpus import ingest
from circuitlab.analog.mcq import load_mcq
from circuitlab.analog.sft_data import load_sft_data
from circuitlab.circuits.tasks.jsonl import load_jsonl_task
from circuitlab.core.config import config_from_dict, read_toml
from circuitlab.core.errors import CircuitlabError
from circuitlab.cot.config import TrainConfig

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False), st.text(max_size=12),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


def records(keys: tuple[str, ...]) -> st.SearchStrategy[str]:
    """JSON lines near the reader's format (its keys, any values), broken lines, raw text."""
    near = st.fixed_dictionaries({}, optional={k: values for k in keys}).map(json.dumps)
    line = st.one_of(near, values.map(json.dumps), st.text(max_size=30),
                     near.map(lambda s: s[: len(s) // 2]))  # fmt: skip
    return st.lists(line, max_size=6).map("\n".join)


def contents(keys: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    return st.one_of(records(keys).map(lambda s: s.encode("utf-8", "surrogatepass")),
                     st.binary(max_size=120))  # fmt: skip


def gives_result_or_one_line_error(call: Callable[[], Any]) -> None:
    try:
        call()
    except CircuitlabError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)


class CharTokenizer:
    """One token per character, no chat template: enough for the readers' token checks,
    and instant."""

    chat_template = None
    eos_token = "</s>"

    def __call__(self, text: str, **_: Any) -> _Ids:
        return _Ids([ord(c) for c in text])

    def decode(self, ids: list[int], **_: Any) -> str:  # what a cut reply kept, for its report
        return "".join(map(chr, ids))


class _Ids(dict):
    """What a tokenizer returns: `["input_ids"]` and `.input_ids` both work."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(input_ids=ids)
        self.input_ids = ids


@FUZZ
@given(data=contents(("prompt", "answer", "negative", "wrong")))
def test_task_jsonl_reader(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "task.jsonl"
    path.write_bytes(data)
    gives_result_or_one_line_error(lambda: load_jsonl_task(path, CharTokenizer()))


MCQ_KEYS = ("question", "options", "answer", "groundtruth", "level", "subfield", "id")
lettered_options = st.lists(
    st.tuples(st.sampled_from(["A.", "(A)", "B.", "(B)", "B)", "C:", "D.", " ", "\n"]),
              st.text(max_size=6)),
    max_size=5,
).map(lambda parts: " ".join(a + b for a, b in parts))  # fmt: skip
mcq_rows = st.fixed_dictionaries(
    {}, optional={k: st.one_of(values, lettered_options) for k in MCQ_KEYS}
)
mcq_arrays = st.lists(st.one_of(mcq_rows, values), max_size=4).map(json.dumps)


@FUZZ
@given(data=st.one_of(contents(MCQ_KEYS), mcq_arrays.map(str.encode),
                      mcq_arrays.map(lambda s: s[: len(s) // 2].encode())))  # fmt: skip
def test_mcq_reader(tmp_path: Path, data: bytes) -> None:
    """JSON lines and JSON arrays (AMSBench's files), with lettered option strings."""
    path = tmp_path / "mcq.json"
    path.write_bytes(data)
    gives_result_or_one_line_error(lambda: load_mcq(path))


@FUZZ
@given(data=contents(("prompt", "response", "question", "answer", "reasoning", "verdict")))
def test_qa_jsonl_reader(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(data)
    gives_result_or_one_line_error(lambda: load_sft_data(path, CharTokenizer(), max_length=64))


markup = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(["# Heading\n", "<h1>T</h1>", "<p>", "</div>", "<section", "@title x",
                         "\x00", "%PDF-1.4\n", "<!--", "```\n", "<script>", "&#xFFFFFF;"]),
    ),
    max_size=10,
).map("".join)  # fmt: skip


@FUZZ
@given(
    suffix=st.sampled_from([".txt", ".md", ".html", ".sml", ".pdf"]),
    data=st.one_of(markup.map(lambda s: s.encode("utf-8", "surrogatepass")),
                   st.binary(max_size=200)),
)  # fmt: skip
def test_corpus_file_reader(tmp_path: Path, suffix: str, data: bytes) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / f"doc{suffix}").write_bytes(data)
    gives_result_or_one_line_error(lambda: ingest(folder))


toml_keys = st.sampled_from(["layers", "d_model", "heads", "lr", "task", "size", "p", "num",
                             "format", "dropout", "epochs", "device", "nosuch"])  # fmt: skip
toml_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str), st.floats(allow_nan=False).map(repr),
    st.text(string.ascii_letters, max_size=6).map(json.dumps),
    st.sampled_from(["true", "[1, 2]", "{a = 1}", "1979-05-27", "inf", "nan", "'x", "="]),
)  # fmt: skip
tables = st.dictionaries(toml_keys, toml_values, max_size=5).map(
    lambda d: "".join(f"{k} = {v}\n" for k, v in d.items())
)


@FUZZ
@given(
    body=tables,
    header=st.sampled_from(["[train]\n", "", "train = 3\n", "[train.x]\n"]),
    raw=st.one_of(st.none(), st.binary(max_size=60)),
)
def test_toml_config_reader(tmp_path: Path, body: str, header: str, raw: bytes | None) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(raw if raw is not None else (header + body).encode())
    gives_result_or_one_line_error(lambda: config_from_dict(TrainConfig, read_toml(path, "train")))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "circuitlab", *args], capture_output=True,
                          text=True, cwd=cwd)  # fmt: skip


@pytest.mark.parametrize(
    "args, file, data, message",
    [
        (["cot", "train", "--config", "bad.toml", "--out", "run"], "bad.toml", b"\xff\xfe",
         "bad.toml is not UTF-8"),
        (["analog", "eval", "--mcq", "bad.jsonl", "--no-drift"], "bad.jsonl",
         b'{"question": "q", "options": ["a", "b"], "answer": "A"}\n{"question": ',
         "bad.jsonl:2 is not valid JSON"),
        (["analog", "train", "--data", "bad.jsonl", "--out", "run"], "bad.jsonl",
         b"\xe9t\xe9\n", "bad.jsonl is not UTF-8"),
        (["analog", "nodes", "--corpus", "corpus", "--out", "run"], "corpus/a.md", b"\xff" * 9,
         "none of the 1 documents in corpus folder"),
    ],
    ids=["toml", "mcq", "qa", "corpus"],
)  # fmt: skip
def test_a_bad_file_through_the_cli_is_exit_2_in_one_line(tmp_path, args, file, data, message):
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_bytes(data)
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()
