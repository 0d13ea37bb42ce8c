import os

import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import (
    append_jsonl,
    atomic_dir,
    atomic_files,
    atomic_open,
    atomic_write_json,
    read_json,
    read_jsonl,
)


def test_atomic_write_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"half")
        raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}  # the old file is untouched
    assert os.listdir(tmp_path) == ["out.json"]  # and no temporary file is left


def test_unwritable_location_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CircuitlabError, match="cannot write"):
        atomic_write_json(blocker / "sub" / "out.json", {})


def test_jsonl_run_file_reader_skips_a_truncated_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"step": 1}, {"step": 2}])
    with path.open("a") as handle:
        handle.write('{"step": 3, "lo')
    assert read_jsonl(path, mode="run") == [{"step": 1}, {"step": 2}]


def test_jsonl_user_reader_rejects_a_malformed_last_line_naming_it(tmp_path):
    path = tmp_path / "user.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "lo')
    with pytest.raises(CircuitlabError, match=r"user\.jsonl:3 is not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": 2\n')  # terminated but malformed: an error in both modes
    with pytest.raises(CircuitlabError, match=":2"):
        read_jsonl(path, mode="run")


def test_jsonl_reader_splits_on_newline_only(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('{"q": "a\u2028b\u0085c"}\r\n{"q": "e"}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"q": "a\u2028b\u0085c"}, {"q": "e"}]


def test_jsonl_reader_turns_unreadable_files_into_one_line_errors(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"q": "caf\xe9"}\n')
    with pytest.raises(CircuitlabError, match=r"latin1\.jsonl is not UTF-8"):
        read_jsonl(bad)
    with pytest.raises(CircuitlabError, match="is a directory"):
        read_jsonl(tmp_path)
    with pytest.raises(CircuitlabError, match="is a directory"):
        read_json(tmp_path)
    with pytest.raises(CircuitlabError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    array = tmp_path / "array.jsonl"
    array.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(CircuitlabError, match=":2 is not a JSON object"):
        read_jsonl(array)


def test_jsonl_reader_rejects_corruption_in_the_middle(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(CircuitlabError, match=":2"):
        read_jsonl(path)


def test_atomic_dir_replaces_the_whole_directory_or_leaves_it_untouched(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    assert (target / "a").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]  # replaced, not merged
    assert os.listdir(tmp_path) == ["ckpt"]  # no temporary or set-aside copy is left


def test_atomic_dir_without_replace_keeps_what_another_process_wrote_first(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "first").write_text("")
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "second").write_text("")
    assert [p.name for p in target.iterdir()] == ["first"]
    assert os.listdir(tmp_path) == ["cache"]


def test_atomic_files_commit_all_or_none(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with pytest.raises(RuntimeError), atomic_files([a, b]) as files:
        files[a].write(b"1")
        raise RuntimeError("killed after the first file")
    assert os.listdir(tmp_path) == []  # no file and no temporary
    with atomic_files([a, b]) as files:
        files[a].write(b"1")
        assert not a.exists()  # nothing is in place until every file is written
        files[b].write(b"2")
    assert (a.read_text(), b.read_text()) == ("1", "2")
    b.unlink()
    b.mkdir()
    with (
        pytest.raises(CircuitlabError, match=r"b\.jsonl: it is a directory"),
        atomic_files([a, b]) as files,
    ):
        files[a].write(b"new")
    assert a.read_text() == "1"
