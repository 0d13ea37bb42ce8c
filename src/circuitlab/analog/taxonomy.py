"""The domain knowledge framework: a user-editable taxonomy of analog design, and tagging.

The taxonomy is data (data/taxonomy.toml, or the user's own file). Texts are tagged by
embedding similarity, not by the LLM: each leaf branch and each text become TF-IDF vectors
(a sparse lexical embedding, word 1-2 grams, fitted on the texts being tagged plus the
branch descriptions) and a text takes the most similar leaf, plus any other leaf within
`second_ratio` of the best. A 135M model cannot classify into 20 branches reliably, and
this is deterministic, instant and explainable; a record's `tagged_by` names the method.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from circuitlab.core.errors import CircuitlabError

DEFAULT_TAXONOMY = Path(__file__).resolve().parent / "data" / "taxonomy.toml"
TAGGED_BY = "tfidf-cosine"
UNTAGGED = "untagged"


@dataclass(frozen=True)
class Branch:
    id: str
    name: str
    description: str
    keywords: tuple[str, ...] = ()

    @property
    def top(self) -> str:
        return self.id.split(".")[0]

    def document(self) -> str:
        # Keywords are repeated so that they outweigh the generic words of descriptions.
        return " ".join([self.name, self.description, *(self.keywords * 3)])


@dataclass(frozen=True)
class Taxonomy:
    branches: tuple[Branch, ...]
    source: str

    @property
    def tops(self) -> list[str]:
        return list(dict.fromkeys(b.top for b in self.branches))

    @property
    def leaves(self) -> list[Branch]:
        """Branches with no children (a top-level branch without leaves is its own leaf)."""
        ids = {b.id for b in self.branches}
        return [b for b in self.branches if not any(i.startswith(b.id + ".") for i in ids)]

    def name(self, branch_id: str) -> str:
        return next((b.name for b in self.branches if b.id == branch_id), branch_id)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    path = Path(path) if path is not None else DEFAULT_TAXONOMY
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CircuitlabError(f"taxonomy file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CircuitlabError(f"taxonomy file {path} is not valid TOML: {e}") from None
    entries = data.get("branch")
    if not isinstance(entries, list) or not entries:
        raise CircuitlabError(f"taxonomy file {path} has no [[branch]] entries")
    branches = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not entry.get("id") or not entry.get("name"):
            raise CircuitlabError(f"taxonomy file {path}: branch {number} needs an id and a name")
        unknown = set(entry) - {"id", "name", "description", "keywords"}
        if unknown:
            raise CircuitlabError(
                f"taxonomy file {path}: branch {entry['id']!r} has unknown key(s) "
                f"{', '.join(sorted(unknown))} (known: id, name, description, keywords)"
            )
        branches.append(
            Branch(
                id=str(entry["id"]),
                name=str(entry["name"]),
                description=str(entry.get("description", "")),
                keywords=tuple(str(k) for k in entry.get("keywords", [])),
            )
        )
    ids = [b.id for b in branches]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise CircuitlabError(f"taxonomy file {path}: duplicate branch id(s) {duplicated}")
    return Taxonomy(tuple(branches), str(path))


def tag_texts(
    texts: Sequence[str],
    taxonomy: Taxonomy,
    min_score: float = 0.02,
    second_ratio: float = 0.8,
) -> list[tuple[list[str], float]]:
    """(leaf ids, best cosine score) per text; ([UNTAGGED], score) when nothing is close."""
    if not texts:
        return []
    from sklearn.feature_extraction.text import TfidfVectorizer

    leaves = taxonomy.leaves
    vectorizer = TfidfVectorizer(
        stop_words="english", ngram_range=(1, 2), sublinear_tf=True, min_df=1
    )
    matrix = vectorizer.fit_transform([*texts, *(leaf.document() for leaf in leaves)])
    scores = (matrix[: len(texts)] @ matrix[len(texts) :].T).toarray()
    tagged = []
    for row in scores:
        best = float(row.max())
        if best < min_score:
            tagged.append(([UNTAGGED], round(best, 4)))
            continue
        order = row.argsort()[::-1]
        tags = [leaves[i].id for i in order[:2] if row[i] >= second_ratio * best]
        tagged.append((tags, round(best, 4)))
    return tagged


def top_branch(tag: str) -> str:
    return tag.split(".")[0]
