"""Cleaning text that every format shares: hyphenation, hard wraps, whitespace, paragraphs.

Format readers first turn their markup into plain text with blank lines between paragraphs
and list items on lines of their own ("- item", "| table | row"); everything after that is
here, so that a PDF, a Markdown file and a SubML chapter come out in the same shape.
"""

from __future__ import annotations

import re
import unicodedata

# "ampli-\nfier" -> "amplifier"; a capital after the break is kept hyphenated ("Class-\nA").
_HYPHEN_BREAK = re.compile(r"(\w)-\n[ \t]*([a-z])")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STRUCTURED_LINE = re.compile(r"^(- |\| |\d+[.)] )")
# References to figures that are not in the text any more ("(Figure below)", "in Figure 3.2").
_FIGURE_REF = [
    re.compile(r"\s*\((?:see |as in )?(?:Figures?|Fig\.)\s*(?:below|above|\d[\w.-]*)[^()]*\)"),
    re.compile(r"\s*\b(?:as shown in |shown in |in |see )?(?:Figures?|Fig\.) (?:below|above)\b"),
]
_PAGE_NUMBER = re.compile(r"^\s*(page\s+)?\d{1,4}(\s+of\s+\d{1,4})?\s*$", re.IGNORECASE)


def dehyphenate(text: str) -> str:
    return _HYPHEN_BREAK.sub(r"\1\2", text)


def unwrap(paragraph: str) -> str:
    """Join hard-wrapped lines of one paragraph; list items and table rows keep their lines."""
    lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
    out: list[str] = []
    for line in lines:
        if out and not _STRUCTURED_LINE.match(line):
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
    return "\n".join(out)


def paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of cleaned text (blank-line separated)."""
    return [p for p in text.split("\n\n") if p.strip()]


def drop_figure_refs(text: str) -> str:
    for pattern in _FIGURE_REF:
        text = pattern.sub("", text)
    return text


def clean_text(text: str) -> str:
    """Normalise Unicode, join hyphenated breaks and hard wraps, drop figure references,
    collapse whitespace.

    The result has single spaces, paragraphs separated by exactly one blank line, and no
    leading or trailing whitespace: the shape every section text has.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = drop_figure_refs(dehyphenate(_SPACES.sub(" ", text)))
    blocks = (_SPACES.sub(" ", unwrap(block)).strip() for block in _BLANK_LINES.split(text))
    return "\n\n".join(block for block in blocks if block)


def drop_page_furniture(pages: list[str]) -> list[str]:
    """Remove running headers/footers and page numbers from extracted PDF pages.

    A line is furniture if it is a bare page number, or if the same line (digits ignored)
    opens or closes at least half of the pages (and at least three of them).
    """

    def key(line: str) -> str:
        return re.sub(r"\d+", "#", line.strip().lower())

    edges: dict[str, int] = {}
    for page in pages:
        lines = [line for line in page.split("\n") if line.strip()]
        for line in {key(x) for x in lines[:2] + lines[-2:]}:
            edges[line] = edges.get(line, 0) + 1
    repeated = {k for k, n in edges.items() if n >= max(3, len(pages) / 2)}
    cleaned = []
    for page in pages:
        kept = [
            line
            for line in page.split("\n")
            if not _PAGE_NUMBER.match(line) and key(line) not in repeated
        ]
        cleaned.append("\n".join(kept))
    return cleaned
