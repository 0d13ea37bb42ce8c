"""Exact and near-duplicate paragraphs, found with MinHash LSH (datasketch).

Textbooks repeat themselves across volumes and editions (the same licence page, the same
paragraph lightly edited), and duplicated training text over-weights a few facts. A
paragraph is compared as a set of word 3-gram shingles of its lower-cased words: an exact
duplicate has the same word sequence; a near duplicate has an estimated Jaccard similarity
at or above the threshold to a paragraph seen before. Short paragraphs (list headers,
"REVIEW:") are never dropped: they are too short for shingles to mean anything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"[a-z0-9]+")
SHINGLE = 3


@dataclass(frozen=True)
class Match:
    kind: str  # "exact" or "near"
    of: str  # key of the paragraph kept
    similarity: float


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Deduplicator:
    """Feed paragraphs in corpus order; `check` says whether each repeats an earlier one."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 128, min_words: int = 12) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.min_words = min_words
        # LSH banding only finds candidates; it misses many pairs near its threshold, so it
        # is tuned lower and each candidate is checked against the real threshold.
        self.lsh = MinHashLSH(threshold=max(0.3, threshold - 0.2), num_perm=num_perm)
        self.exact: dict[str, str] = {}
        self.sketches: dict[str, MinHash] = {}

    def sketch(self, tokens: list[str]) -> MinHash:
        shingles = {" ".join(tokens[i : i + SHINGLE]) for i in range(len(tokens) - SHINGLE + 1)}
        sketch = MinHash(num_perm=self.num_perm, seed=1)
        sketch.update_batch([s.encode() for s in sorted(shingles)])
        return sketch

    def check(self, key: str, text: str) -> Match | None:
        """None if `text` is new (it is then remembered under `key`), else what it repeats."""
        tokens = words(text)
        if len(tokens) < self.min_words:
            return None
        digest = hashlib.sha1(" ".join(tokens).encode()).hexdigest()
        if digest in self.exact:
            return Match("exact", self.exact[digest], 1.0)
        sketch = self.sketch(tokens)
        best: Match | None = None
        for other in self.lsh.query(sketch):
            similarity = sketch.jaccard(self.sketches[other])
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = Match("near", other, round(float(similarity), 3))
        if best is not None:
            return best
        self.exact[digest] = key
        self.sketches[key] = sketch
        self.lsh.insert(key, sketch)
        return None
