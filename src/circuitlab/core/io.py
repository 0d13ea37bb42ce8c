"""Files that survive interruption: atomic writes and append-only JSON lines.

A killed process must never leave a half-written results file behind, so whole files are
written to a temporary sibling and renamed into place (rename is atomic on POSIX). Metrics
are appended one line at a time; a reader of such a run file skips a last line cut short by
a kill, while a user's JSON-lines file is read strictly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from circuitlab.core.errors import CircuitlabError


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CircuitlabError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """A fresh temporary directory next to `target`, renamed onto `target` only if the block
    succeeds, so a kill leaves the whole directory or none of it (a failed block leaves none).

    An existing `target` is replaced (`replace`) or, when another process may have written
    the same content first (a cache), kept and the new copy dropped.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        raise CircuitlabError(f"cannot write {target}: {e.strerror or e}") from None
    try:
        yield tmp
        if target.exists() and not replace:
            shutil.rmtree(tmp)
            return
        if target.exists():
            # rename the old copy aside first: the gap without `target` is two renames long
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, aside / target.name)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(aside / target.name, target)
                raise
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if replace or not target.exists():  # not lost to a process that finished first
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_files(paths: Iterable[str | Path], mode: str = "wb") -> Iterator[dict[Path, IO[Any]]]:
    """One temporary file per path; all are renamed into place only after the block has
    written every one of them, so a failure leaves none of the new set (a train split
    without its test split is worse than no data). Targets that are directories are
    refused before the block runs, so they cannot fail the renames half-way.
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        if target.is_dir():
            raise CircuitlabError(f"cannot write {target}: it is a directory")
    temps: dict[Path, str] = {}
    handles: dict[Path, IO[Any]] = {}
    try:
        umask = os.umask(0)
        os.umask(umask)
        for target in targets:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
                )
            except OSError as e:
                raise CircuitlabError(f"cannot write {target}: {e.strerror or e}") from None
            temps[target] = tmp
            os.chmod(tmp, 0o666 & ~umask)
            handles[target] = os.fdopen(fd, mode)
        yield handles
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for target, tmp in temps.items():
            try:
                os.replace(tmp, target)
            except OSError as e:
                raise CircuitlabError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        for handle in handles.values():
            handle.close()
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_user_text(path: Path) -> str:
    """The text of `path`, with every way a user's file can be unreadable (missing, a
    directory, unreadable, not UTF-8) turned into one line naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CircuitlabError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CircuitlabError(f"{path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise CircuitlabError(
            f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise CircuitlabError(f"cannot read {path}: {e.strerror or e}") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_user_text(path)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CircuitlabError(f"{path} is not valid JSON: {e}") from None


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one line each, flushed to disk before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


JsonlMode = Literal["strict", "run"]


def read_jsonl(path: str | Path, *, mode: JsonlMode = "strict") -> list[dict[str, Any]]:
    """All records of a JSON-lines file, each a JSON object.

    `mode="run"` is for files circuitlab itself appends to (metrics, a distill run's qa and
    failures): a kill can cut their last line short, and that line is skipped. Anything a
    user gives is `"strict"`: a malformed line, the last one included, is an error naming it,
    because silently dropping a user's record changes their results. Lines split on "\n"
    only: a raw U+2028 or U+0085 inside a JSON string is part of the line, not a break.
    """
    path = Path(path)
    lines = read_user_text(path).split("\n")
    unterminated = len(lines)  # the split's last piece has no newline after it
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip(" \t\r"):
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if mode == "run" and number == unterminated:
                break  # cut short by an interrupted writer
            raise CircuitlabError(f"{path}:{number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise CircuitlabError(f"{path}:{number} is not a JSON object ({{...}})")
        records.append(record)
    return records
