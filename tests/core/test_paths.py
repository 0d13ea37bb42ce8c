"""The path policy (core/paths.py): what stays inside a folder, and what is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.paths import OutsideRoot, Skipped, files_inside, resolve_inside


@pytest.fixture
def tree(tmp_path):
    """root/ with a plot, a subfolder and symlinks inside and out; secret.txt beside it."""
    root = tmp_path / "root"
    (root / "plots").mkdir(parents=True)
    (root / "a.png").write_bytes(b"a")
    (root / "plots" / "b.png").write_bytes(b"b")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "c.png").write_bytes(b"c")
    (root / "linked.png").symlink_to(tmp_path / "secret.txt")
    (root / "inner.png").symlink_to(root / "plots" / "b.png")
    (root / "out-dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "in-dir").symlink_to(root / "plots", target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    return root


def test_paths_inside_resolve(tree):
    assert resolve_inside(tree, "a.png") == (tree / "a.png").resolve()
    assert resolve_inside(tree, "plots/../a.png") == (tree / "a.png").resolve()
    assert resolve_inside(tree, "inner.png") == (tree / "plots" / "b.png").resolve()
    assert resolve_inside(tree, "in-dir/b.png") == (tree / "plots" / "b.png").resolve()
    # not there yet is the caller's business, not a refusal
    assert resolve_inside(tree, "later.png") == (tree / "later.png").resolve()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../secret.txt", "'..' leads out of"),
        ("plots/../../secret.txt", "'..' leads out of"),
        ("linked.png", "a symlink leads out of"),
        ("out-dir/c.png", "a symlink leads out of"),
        ("dangling.png", "a symlink leads out of"),
        ("", "empty path"),
        ("a\x00.png", "NUL"),
        ("C:/Windows/x.png", "an absolute path"),
    ],
)
def test_paths_that_lead_out_are_refused_with_the_reason(tree, path, reason):
    with pytest.raises(OutsideRoot, match=reason) as refused:
        resolve_inside(tree, path)
    assert reason in refused.value.reason
    assert isinstance(refused.value, CircuitlabError)  # the CLI shows it as one line


def test_absolute_paths_are_refused_even_inside(tree):
    for path in (tree / "a.png", tree.parent / "secret.txt", "/etc/passwd"):
        with pytest.raises(OutsideRoot, match="an absolute path"):
            resolve_inside(tree, path)


def test_a_symlinked_root_confines_to_where_it_points(tree, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(tree, target_is_directory=True)
    assert resolve_inside(alias, "a.png") == (tree / "a.png").resolve()
    with pytest.raises(OutsideRoot):
        resolve_inside(alias, "linked.png")


def test_a_symlink_loop_is_refused(tree):
    (tree / "loop.png").symlink_to(tree / "loop.png")
    with pytest.raises(OutsideRoot):
        resolve_inside(tree, "loop.png")


def test_files_inside_lists_files_and_what_it_skipped(tree):
    walk = files_inside(tree)
    real = tree.resolve()
    assert walk.files == tuple(sorted([real / "a.png", real / "plots" / "b.png"]))
    assert [(s.path.name, s.reason.split(" (")[0]) for s in walk.skipped] == [
        ("dangling.png", f"a symlink leads out of {real}"),
        ("linked.png", f"a symlink leads out of {real}"),
        ("out-dir", f"a symlink leads out of {real}"),
    ]
    assert all(isinstance(s, Skipped) for s in walk.skipped)


def test_files_inside_filters_suffixes_and_depth(tree):
    (tree / "notes.TXT").write_text("x")
    (tree / "plots" / "deep.PNG").write_bytes(b"d")
    top = files_inside(tree, suffixes={".png"}, recursive=False)
    assert [p.name for p in top.files] == ["a.png", "b.png"]  # b.png through inner.png
    assert {s.path.name for s in top.skipped} == {"dangling.png", "linked.png", "out-dir"}
    txt = files_inside(tree, suffixes=[".txt"])
    assert [p.name for p in txt.files] == ["notes.TXT"]
    # a folder leading out is listed whatever the suffixes: what it holds is unknown
    assert [s.path.name for s in txt.skipped] == ["out-dir"]
    assert "deep.PNG" in [p.name for p in files_inside(tree, suffixes=[".png"]).files]


def test_files_inside_reports_unreadable_folders(tree, monkeypatch):
    locked = tree / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path):  # chmod 0 does not stop root, who runs these tests in CI
        if Path(path) == locked.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    walk = files_inside(tree)
    assert [(s.path.name, s.reason) for s in walk.skipped if "cannot be read" in s.reason] == [
        ("locked", "cannot be read: Permission denied")
    ]
    assert "x.png" not in [p.name for p in walk.files]
