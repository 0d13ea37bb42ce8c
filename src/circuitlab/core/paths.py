"""The one path policy: a path read on behalf of a folder must stay inside that folder.

A report.md, a corpus or a config names files relative to the folder it lives in. Joined
naively, `../x`, an absolute path or a symlink to /etc/passwd reads (and, in a report,
publishes) a file the folder's author never had. So every such path goes through
`resolve_inside`: symlinks and `..` are resolved first, and the result is returned only if
it is still inside the resolved folder; otherwise `OutsideRoot` says why. A symlink that
stays inside the folder is fine: the folder's own files are what is being read.

`files_inside` walks a folder under the same rule and lists what it skipped, with the
reason, so a caller can report it instead of silently dropping or silently following it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from circuitlab.core.errors import CircuitlabError


class OutsideRoot(CircuitlabError):
    """A path that leads out of the folder it was read for; `reason` says how."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Skipped:
    path: Path  # as found under the root, before resolving
    reason: str


@dataclass(frozen=True)
class FileWalk:
    files: tuple[Path, ...]  # resolved, inside the root, sorted, each once
    skipped: tuple[Skipped, ...]


def resolve_inside(root: str | Path, path: str | Path) -> Path:
    """`path` (relative to `root`) resolved, if it stays inside `root`; else `OutsideRoot`.

    Absolute paths are refused even when they happen to point inside: a file that names
    its neighbours absolutely breaks as soon as the folder moves, and the check should not
    depend on where the folder is today. The path need not exist (the caller says
    "missing" better than we can), but a dangling symlink is judged by where it points.
    """
    text = str(path)
    if not text:
        raise OutsideRoot(path, "empty path")
    if "\x00" in text:
        raise OutsideRoot(repr(text), "contains a NUL byte")
    if Path(text).is_absolute() or PureWindowsPath(text).anchor:
        raise OutsideRoot(path, f"an absolute path: give it relative to {root}")
    base = Path(root).resolve()
    joined = Path(os.path.normpath(base / text))
    if not joined.is_relative_to(base):
        raise OutsideRoot(path, f"'..' leads out of {root}")
    try:
        resolved = (base / text).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise OutsideRoot(path, f"cannot be resolved: {e}") from None
    if not resolved.is_relative_to(base):
        raise OutsideRoot(path, f"a symlink leads out of {root} (to {resolved})")
    return resolved


def files_inside(
    root: str | Path, *, suffixes: Iterable[str] | None = None, recursive: bool = True
) -> FileWalk:
    """The regular files under `root` (with one of `suffixes`, compared lower-case), and
    what was skipped: symlinks leading out, and folders that could not be read.

    Symlinked folders are not descended into: one inside `root` is walked where it really
    is, one leading out is skipped and listed. A symlinked file inside `root` counts once,
    as the file it points to.
    """
    base = Path(root).resolve()
    wanted = {s.lower() for s in suffixes} if suffixes is not None else None
    files: set[Path] = set()
    skipped: list[Skipped] = []

    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else base
        skipped.append(Skipped(where, f"cannot be read: {error.strerror or error}"))

    for folder, dirs, names in os.walk(base, onerror=unreadable):
        here = Path(folder)
        for name in dirs:
            if (here / name).is_symlink():
                try:
                    resolve_inside(base, (here / name).relative_to(base))
                except OutsideRoot as e:
                    skipped.append(Skipped(here / name, e.reason))
        if not recursive:
            dirs.clear()
        for name in names:
            entry = here / name
            if wanted is not None and entry.suffix.lower() not in wanted:
                continue
            try:
                resolved = resolve_inside(base, entry.relative_to(base))
            except OutsideRoot as e:
                skipped.append(Skipped(entry, e.reason))
                continue
            if resolved.is_file():
                files.add(resolved)
    skipped.sort(key=lambda s: str(s.path))
    return FileWalk(tuple(sorted(files)), tuple(skipped))
