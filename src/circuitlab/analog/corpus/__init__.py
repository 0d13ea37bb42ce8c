"""A folder of documents -> a cleaned, sectioned, deduplicated corpus with provenance.

Files are read in sorted order (so the same folder gives the same corpus), each by the
reader for its format (readers.py); a file that cannot be read is reported and skipped.
Paragraphs repeating an earlier one are dropped (dedup.py). What is kept is assembled into
one cleaned text per document; every section records its heading path, its character span
in that cleaned text (`doc.text[start:end] == section.text`) and its span in the source
file (characters of the decoded file, or pages of a PDF).
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab.analog.corpus.clean import paragraphs
from circuitlab.analog.corpus.dedup import SHINGLE, Deduplicator
from circuitlab.analog.corpus.readers import FORMATS, RawSection, Unreadable, read_file
from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.paths import files_inside

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "textbook"


@dataclass(frozen=True)
class CorpusConfig:
    """How a folder becomes a corpus.

    exclude: file-name patterns that are not content (licences, contributor lists, the
    textbook's own about/contrib/licence chapters). exclude_sections: heading patterns of
    sections that are not content (credits, reference lists). near_duplicate: estimated Jaccard
    similarity of word 3-gram shingles at which a paragraph counts as a repeat.
    min_dedup_words: shorter paragraphs are never dropped as duplicates.
    """

    exclude: tuple[str, ...] = (
        "LICENSE*",
        "LICENCE*",
        "NOTICE*",
        "README*",
        "about.sml",
        "contrib.sml",
        "dsl.sml",
    )
    exclude_sections: tuple[str, ...] = (
        "Contributors",
        "Bibliography",
        "References",
        "Acknowledg*",
        "Index",
    )
    near_duplicate: float = option(
        0.85, "MinHash Jaccard similarity at which a paragraph counts as a repeat."
    )
    min_dedup_words: int = 12
    num_perm: int = 128

    def __post_init__(self) -> None:
        require(
            0.0 < self.near_duplicate <= 1.0,
            f"near_duplicate {self.near_duplicate}: use a similarity in (0, 1]",
        )
        require(self.min_dedup_words >= SHINGLE, f"min_dedup_words must be at least {SHINGLE}")
        require(self.num_perm >= 16, "num_perm must be at least 16")


@dataclass(frozen=True)
class Section:
    id: str
    doc: str  # path of the file relative to the corpus folder
    path: tuple[str, ...]  # heading path
    text: str
    span: tuple[int, int]  # in the document's cleaned text
    source_span: tuple[int, int]
    source_unit: str  # "char" or "page"

    def provenance(self) -> dict[str, Any]:
        return {
            "file": self.doc,
            "section": list(self.path),
            "span": list(self.span),
            "source_span": list(self.source_span),
            "source_unit": self.source_unit,
        }


@dataclass(frozen=True)
class Document:
    id: str
    format: str
    sha256: str
    text: str  # the cleaned text every section span points into


@dataclass
class Corpus:
    documents: list[Document] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # file, reason
    excluded: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    paragraphs_kept: int = 0

    def summary(self) -> dict[str, Any]:
        kinds = [d["kind"] for d in self.duplicates]
        return {
            "documents": len(self.documents),
            "sections": len(self.sections),
            "paragraphs_kept": self.paragraphs_kept,
            "characters": sum(len(d.text) for d in self.documents),
            "exact_duplicates_dropped": kinds.count("exact"),
            "near_duplicates_dropped": kinds.count("near"),
            "skipped": self.skipped,
            "excluded": self.excluded,
        }


def list_files(
    folder: Path, config: CorpusConfig, skipped: list[dict[str, str]] | None = None
) -> tuple[list[Path], list[str]]:
    """(files to read, names excluded as non-content), both sorted.

    Files are found under the one path policy (core.paths): a symlink that leads out of the
    corpus folder is never read (its target would become nodes and be sent to an LLM); it is
    appended to `skipped` with the reason instead.
    """
    if not folder.is_dir():
        raise CircuitlabError(f"corpus folder {folder} does not exist or is not a folder")
    root = folder.resolve()
    walk = files_inside(root)
    if skipped is not None:
        skipped.extend(
            {"file": s.path.relative_to(root).as_posix(), "reason": s.reason}
            for s in walk.skipped
            if not any(part.startswith(".") for part in s.path.relative_to(root).parts)
        )
    files, excluded = [], []
    for path in walk.files:
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts):
            continue
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in config.exclude):
            excluded.append("/".join(parts))
        else:
            files.append(path)
    return files, excluded


def ingest(folder: str | Path, config: CorpusConfig | None = None, on_file=None) -> Corpus:
    """Read, clean, section and deduplicate every document under `folder`.

    `on_file(name)` is called after each file (for a progress bar).
    """
    config = config or CorpusConfig()
    folder = Path(folder)
    outside: list[dict[str, str]] = []
    files, excluded = list_files(folder, config, outside)
    folder = folder.resolve()
    corpus = Corpus(excluded=excluded, skipped=outside)
    dedup = Deduplicator(config.near_duplicate, config.num_perm, config.min_dedup_words)
    read_names = {path.relative_to(folder).as_posix() for path in files}
    for path in files:
        rel = path.relative_to(folder).as_posix()
        try:
            fmt, raw_sections = read_file(path)
        except Unreadable as e:
            corpus.skipped.append({"file": rel, "reason": str(e)})
        else:
            _add_document(corpus, rel, fmt, path, raw_sections, dedup, config.exclude_sections)
        if on_file is not None:
            on_file(rel)
    if not corpus.sections and not corpus.skipped and not files:
        supported = ", ".join(sorted(FORMATS))
        raise CircuitlabError(f"corpus folder {folder} holds no documents ({supported})")
    unread = [s for s in corpus.skipped if s["file"] in read_names]
    if files and len(unread) == len(files):  # nodes of nothing would only look like success
        first = unread[0]
        raise CircuitlabError(
            f"none of the {len(files)} documents in corpus folder {folder} could be read "
            f"({first['file']}: {first['reason']})"
        )
    return corpus


def _add_document(
    corpus: Corpus,
    rel: str,
    fmt: str,
    path: Path,
    raw_sections: list[RawSection],
    dedup: Deduplicator,
    exclude_sections: tuple[str, ...],
) -> None:
    parts: list[str] = []
    offset = 0
    sections = []
    for number, raw in enumerate(raw_sections):
        if any(fnmatch.fnmatch(raw.path[-1], p) for p in exclude_sections):
            continue
        kept = []
        for index, paragraph in enumerate(paragraphs(raw.text)):
            key = f"{rel}#{number}.{index} ({' > '.join(raw.path)})"
            match = dedup.check(key, paragraph)
            if match is None:
                kept.append(paragraph)
            else:
                corpus.duplicates.append(
                    {
                        "file": rel,
                        "section": list(raw.path),
                        "kind": match.kind,
                        "similarity": match.similarity,
                        "duplicate_of": match.of,
                        "text": paragraph[:200],
                    }
                )
        if not kept:
            continue
        text = "\n\n".join(kept)
        if parts:
            offset += 2  # the blank line between sections
        span = (offset, offset + len(text))
        parts.append(text)
        offset = span[1]
        digest = hashlib.sha1(f"{rel}|{number}|{text}".encode()).hexdigest()[:12]
        sections.append(
            Section(f"s-{digest}", rel, raw.path, text, span, raw.source_span, raw.source_unit)
        )
        corpus.paragraphs_kept += len(kept)
    if sections:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        corpus.documents.append(Document(rel, fmt, sha, "\n\n".join(parts)))
        corpus.sections.extend(sections)
