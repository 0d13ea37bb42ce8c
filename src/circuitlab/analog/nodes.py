"""Sections -> granular learning nodes: one concept each, with source text and provenance.

AnalogSeeker decomposes its raw corpus into "typical, granular learning nodes". Here the
decomposition is rule-based, so that it is deterministic and costs nothing:
- every item of a bulleted list (the textbook's end-of-section REVIEW lists state one fact
  per item) of at least `min_words` words is a node of its own;
- prose paragraphs are grouped in order into nodes of at most `max_words` words; a
  paragraph that introduces a term ("... is called ...", "by definition ...") starts a new
  node, and a paragraph shorter than `min_words` joins its neighbour;
- tables are not nodes (rows of numbers without prose make poor questions).
Each node's kind (definition, relationship, principle) comes from cue phrases, and its tags
from the taxonomy (taxonomy.py: TF-IDF cosine similarity). A node's text is exactly
`document.text[span]`, so every QA record can be traced to the characters it came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.analog.corpus import CorpusConfig, Section, ingest
from circuitlab.analog.taxonomy import (
    TAGGED_BY,
    UNTAGGED,
    Taxonomy,
    load_taxonomy,
    tag_texts,
    top_branch,
)
from circuitlab.core.config import config_to_dict, nested, option, require
from circuitlab.core.io import atomic_open, atomic_write_json, read_json, read_jsonl
from circuitlab.core.runs import RunDir

_DEFINITION = re.compile(
    r"\b(?:is|are) (?:called|known as|defined as|referred to as|termed|named)\b"
    r"|\bby definition\b|\brefers? to\b|\bwe call\b",
    re.IGNORECASE,
)
_TERM = re.compile(
    r"\b(?:is|are) (?:called|known as|referred to as|termed|named) (?:an? |the )?"
    r"[\"“]?([A-Za-z][\w\- ]{1,40}?)[\"”]?(?:[.,;:)]|$| or | and )"
)
_RELATIONSHIP = re.compile(
    r"[A-Za-z_)]\s*=\s*[\w(]|\bproportional\b|\binversely\b|\bequation\b|\bformula\b"
    r"|\bratio of\b|\bequal to\b",
    re.IGNORECASE,
)
_WORDS = re.compile(r"\S+")


@dataclass(frozen=True)
class NodesConfig:
    """Corpus handling plus decomposition: node size bounds and the taxonomy file."""

    corpus: CorpusConfig = nested(CorpusConfig)  # noqa: RUF009 - a default_factory field
    min_words: int = option(20, "Shortest node, in words.")
    max_words: int = option(150, "Longest prose node, in words.")
    taxonomy: str | None = option(
        None,
        "Taxonomy TOML \\[default: the shipped analog-design taxonomy].",
        parse=lambda text: str(Path(text).resolve()),
    )

    def __post_init__(self) -> None:
        if isinstance(self.corpus, dict):
            object.__setattr__(self, "corpus", CorpusConfig(**self.corpus))
        require(self.min_words >= 5, f"min_words {self.min_words}: use at least 5")
        require(
            self.max_words >= 2 * self.min_words,
            f"max_words {self.max_words} must be at least twice min_words {self.min_words}",
        )


@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # definition, relationship or principle
    concept: str
    text: str
    provenance: dict[str, Any]  # file, section path, span in the cleaned document, source
    tags: tuple[str, ...] = ()
    tag_score: float = 0.0
    tagged_by: str = TAGGED_BY

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["tags"] = list(self.tags)
        record["branches"] = sorted({top_branch(t) for t in self.tags})
        return record


def word_count(text: str) -> int:
    return len(_WORDS.findall(text))


def classify(text: str) -> str:
    if _DEFINITION.search(text):
        return "definition"
    if _RELATIONSHIP.search(text):
        return "relationship"
    return "principle"


def concept_of(text: str, section: Section) -> str:
    match = _TERM.search(text)
    return match.group(1).strip() if match else section.path[-1]


def _pieces(section: Section, max_words: int) -> Iterator[tuple[str, int, int]]:
    """(kind, start, end) of each list item, table and prose paragraph in a section; items
    and paragraphs longer than `max_words` come in parts (see `_bounded`)."""
    offset = 0
    for paragraph in section.text.split("\n\n"):
        start, offset = offset, offset + len(paragraph) + 2
        lines = paragraph.split("\n")
        if sum(line.startswith("| ") or line.startswith("|") for line in lines) > len(lines) / 2:
            yield "table", start, start + len(paragraph)
            continue
        if any(line.startswith("- ") for line in lines):
            at = start
            for line in lines:
                if line.startswith("- "):
                    yield from _bounded(section.text, "item", at + 2, at + len(line), max_words)
                else:
                    yield from _bounded(section.text, "prose", at, at + len(line), max_words)
                at += len(line) + 1
            continue
        yield from _bounded(section.text, "prose", start, start + len(paragraph), max_words)


_SENTENCE_END = re.compile(r"[.!?][)\]\"']*\s+")


def _bounded(
    text: str, kind: str, start: int, end: int, max_words: int
) -> Iterator[tuple[str, int, int]]:
    """The span, or parts of it of at most `max_words` words: whole sentences where they fit,
    a sentence longer than that cut between words. Without this, one 20 MB paragraph was one
    node and a 20-million-character request."""
    if word_count(text[start:end]) <= max_words:
        yield kind, start, end
        return
    for part_start, part_end in _parts(text, start, end, max_words):
        # no part starts or ends with the whitespace between two parts
        part_start += len(text[part_start:part_end]) - len(text[part_start:part_end].lstrip())
        part_end -= len(text[part_start:part_end]) - len(text[part_start:part_end].rstrip())
        if part_end > part_start:
            yield kind, part_start, part_end


def _parts(text: str, start: int, end: int, max_words: int) -> Iterator[tuple[int, int]]:
    cuts = [m.end() for m in _SENTENCE_END.finditer(text, start, end)]  # absolute already
    sentences = list(zip([start, *cuts], [*cuts, end], strict=True))
    part_start, part_words = start, 0
    for s_start, s_end in sentences:
        words = word_count(text[s_start:s_end])
        if part_words and part_words + words > max_words:
            yield part_start, s_start
            part_start, part_words = s_start, 0
        if words > max_words:  # one sentence too long: cut it after every max_words words
            ends = [m.end() for m in _WORDS.finditer(text, s_start, s_end)]
            for i in range(max_words - 1, len(ends) - 1, max_words):
                yield part_start, ends[i]
                part_start = ends[i]
            part_words = word_count(text[part_start:s_end])
        else:
            part_words += words
    yield part_start, end


def decompose(section: Section, min_words: int, max_words: int) -> list[tuple[int, int]]:
    """Local (start, end) spans of the nodes of one section."""
    spans: list[tuple[int, int]] = []
    chunk: tuple[int, int] | None = None  # current prose chunk
    chunk_words = 0

    def flush() -> None:
        nonlocal chunk, chunk_words
        if chunk is not None:
            if chunk_words >= min_words:
                spans.append(chunk)
            elif (
                spans
                and section.text[spans[-1][1] : chunk[0]].strip() == ""
                and word_count(section.text[spans[-1][0] : chunk[1]]) <= max_words
            ):
                spans[-1] = (spans[-1][0], chunk[1])  # a short tail joins the node before
        chunk, chunk_words = None, 0

    for kind, start, end in _pieces(section, max_words):
        text = section.text[start:end]
        words = word_count(text)
        if kind != "prose":
            flush()
            if kind == "item" and words >= min_words:
                spans.append((start, end))
            continue
        new_concept = _DEFINITION.search(text) is not None
        too_long = chunk_words + words > max_words
        if chunk is not None and chunk_words >= min_words and (new_concept or too_long):
            flush()
        chunk = (start, end) if chunk is None else (chunk[0], end)
        chunk_words += words
    flush()
    return spans


def build_nodes(sections: list[Section], config: NodesConfig, taxonomy: Taxonomy) -> list[Node]:
    drafts = []
    for section in sections:
        for start, end in decompose(section, config.min_words, config.max_words):
            text = section.text[start:end]
            provenance = section.provenance()
            provenance["span"] = [section.span[0] + start, section.span[0] + end]
            digest = hashlib.sha1(f"{section.doc}|{provenance['span']}|{text}".encode())
            drafts.append((f"n-{digest.hexdigest()[:12]}", section, text, provenance))
    # Headings name the topic better than any sentence: they count three times.
    tags = tag_texts([" ".join([*d[1].path * 3, d[2]]) for d in drafts], taxonomy)
    return [
        Node(
            id=node_id,
            kind=classify(text),
            concept=concept_of(text, section),
            text=text,
            provenance=provenance,
            tags=tuple(node_tags),
            tag_score=score,
        )
        for (node_id, section, text, provenance), (node_tags, score) in zip(
            drafts, tags, strict=True
        )
    ]


def coverage(records: list[dict[str, Any]], taxonomy: Taxonomy, key: str = "tags") -> dict:
    """Count of records per top-level branch and per leaf, including empty branches."""
    leaf_counts: Counter[str] = Counter()
    top_counts: Counter[str] = Counter()
    for record in records:
        tags = record.get(key) or [UNTAGGED]
        leaf_counts.update(tags)
        top_counts.update({top_branch(t) for t in tags})
    out: dict[str, Any] = {}
    for top in taxonomy.tops:
        leaves = {b.id: leaf_counts[b.id] for b in taxonomy.leaves if b.top == top}
        out[top] = {"name": taxonomy.name(top), "count": top_counts[top], "leaves": leaves}
    out[UNTAGGED] = {"name": "no branch close enough", "count": top_counts[UNTAGGED]}
    return out


def nodes_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {
        "nodes": out / "nodes.jsonl",
        "sections": out / "sections.jsonl",
        "documents": out / "documents.jsonl",
        "duplicates": out / "duplicates.jsonl",
        "summary": out / "nodes_summary.json",
    }


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    import json

    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_nodes(
    corpus_dir: str | Path, out: str | Path, config: NodesConfig | None = None, on_file=None
) -> dict[str, Any]:
    """Ingest `corpus_dir` and write nodes.jsonl and a coverage summary into run dir `out`.

    Rerunning on a finished run dir with the same config returns its summary untouched.
    Returns the summary (also written to nodes_summary.json).
    """
    config = config or NodesConfig()
    taxonomy = load_taxonomy(config.taxonomy)
    run_config = {"corpus_dir": str(Path(corpus_dir).resolve()), **config_to_dict(config)}
    paths = nodes_paths(out)
    if (Path(out) / "config.json").exists():  # reopening writes nothing
        run = RunDir.open(out, run_config)
        if run.is_done("nodes") and paths["summary"].exists():
            return read_json(paths["summary"])
    started = time.perf_counter()
    corpus = ingest(corpus_dir, config.corpus, on_file=on_file)
    nodes = build_nodes(corpus.sections, config, taxonomy)
    seconds = time.perf_counter() - started
    # opened once the corpus has been read: a corpus refused (nothing readable, a bad
    # file) leaves no config.json that would refuse the corrected rerun
    run = RunDir.open(out, run_config)
    records = [node.to_record() for node in nodes]
    _write_jsonl(paths["documents"], [dataclasses.asdict(d) for d in corpus.documents])
    _write_jsonl(
        paths["sections"],
        [
            {"id": s.id, **s.provenance(), "words": word_count(s.text), "text": s.text}
            for s in corpus.sections
        ],
    )
    _write_jsonl(paths["duplicates"], corpus.duplicates)
    _write_jsonl(paths["nodes"], records)
    summary = {
        **corpus.summary(),
        "nodes": len(nodes),
        "node_kinds": dict(Counter(n.kind for n in nodes)),
        "mean_node_words": round(sum(word_count(n.text) for n in nodes) / max(1, len(nodes)), 1),
        "tagged_by": TAGGED_BY,
        "taxonomy": taxonomy.source,
        "coverage": coverage(records, taxonomy),
        "seconds": round(seconds, 3),
        "nodes_per_second": round(len(nodes) / seconds, 1) if seconds > 0 else None,
    }
    atomic_write_json(paths["summary"], summary)
    run.mark_done("nodes")
    return summary


def read_nodes(path: str | Path) -> list[dict[str, Any]]:
    """Node records from a nodes.jsonl file (or a run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "nodes.jsonl"
    return read_jsonl(path)
