"""One reader per document format: bytes in, cleaned sections with source spans out.

Every reader returns `RawSection`s: a heading path, cleaned text, and where the section sits
in the source (a character span of the decoded file, or a page span of a PDF). A file that
cannot be read raises `Unreadable` with the reason; the ingester reports it and goes on.
"""

from __future__ import annotations

import bisect
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

from circuitlab.analog.corpus import sml
from circuitlab.analog.corpus.clean import clean_text, drop_page_furniture

FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".sml": "subml",
}


class Unreadable(Exception):
    """The file cannot be turned into text; the message says why."""


@dataclass(frozen=True)
class RawSection:
    path: tuple[str, ...]
    text: str
    source_span: tuple[int, int]
    source_unit: str  # "char" (offsets into the decoded file) or "page" (1-based, inclusive)


def read_file(path: Path) -> tuple[str, list[RawSection]]:
    """(format, sections) of one file; raises Unreadable."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise Unreadable(f"unsupported format {path.suffix or '(no extension)'!r}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Unreadable(f"cannot read: {e.strerror or e}") from None
    if fmt == "pdf":
        return fmt, read_pdf(data, path.stem)
    text = decode(data)
    reader = {"text": read_text, "markdown": read_markdown, "html": read_html, "subml": read_sml}
    return fmt, reader[fmt](text, path.stem)


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is refused.

    Guessing a legacy encoding silently garbles symbols (Ω, μ) that the domain relies on, so
    a non-UTF-8 file is reported with the offending byte and the user converts it.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise Unreadable(f"invalid UTF-16 at byte {e.start}") from None
    if b"\x00" in data[:8192]:
        raise Unreadable("binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(
            f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); convert it to UTF-8"
        ) from None


Heading = tuple[int, int, int, str]  # start, end, level, title


def split_by_headings(
    length: int, heads: list[Heading], body: Callable[[int, int], str], default_title: str
) -> list[RawSection]:
    """Cut a source of `length` characters at each heading; `body(lo, hi)` is its prose.

    A section's path is the stack of enclosing headings; text before the first heading is a
    section named `default_title` (the file name).
    """
    sections = []
    stack: list[tuple[int, str]] = []
    bounds = [(0, 0, 0, default_title), *heads]
    for i, (start, end, level, title) in enumerate(bounds):
        stop = bounds[i + 1][0] if i + 1 < len(bounds) else length
        if i > 0:
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, title)]
        text = clean_text(body(end, stop))
        if text:
            path = tuple(t for _, t in stack) or (default_title,)
            sections.append(RawSection(path, text, (start, stop), "char"))
    return sections


def _slicer(raw: str, to_text: Callable[[str], str]) -> Callable[[int, int], str]:
    return lambda lo, hi: to_text(raw[lo:hi])


def read_text(text: str, title: str) -> list[RawSection]:
    """Plain text has no reliable headings: one section named after the file."""
    return split_by_headings(len(text), [], _slicer(text, str), title)


def read_sml(text: str, title: str) -> list[RawSection]:
    blanked = sml.blank_out(text)
    return split_by_headings(len(text), sml.headings(blanked), _slicer(blanked, sml.to_text), title)


_MD_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_MD_INLINE = [
    (re.compile(r"```.*?```", re.S), ""),  # code listings carry no prose
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),  # figure stubs
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),
    (re.compile(r"</?[A-Za-z][^>]*>"), ""),
    (re.compile(r"^\s*[*+]\s+", re.M), "- "),
    (re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.M), ""),  # table rule lines
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"\1"),
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"^>\s?", re.M), ""),
]


def markdown_to_text(markdown: str) -> str:
    for pattern, replacement in _MD_INLINE:
        markdown = pattern.sub(replacement, markdown)
    return markdown


def read_markdown(text: str, title: str) -> list[RawSection]:
    front = _MD_FRONT_MATTER.match(text)
    if front:
        text = re.sub(r"[^\n]", " ", front.group(0)) + text[front.end() :]
    heads = [
        (m.start(), m.end(), len(m.group(1)), markdown_to_text(m.group(2)).strip())
        for m in _MD_HEADING.finditer(text)
    ]
    return split_by_headings(len(text), heads, _slicer(text, markdown_to_text), title)


class _HTMLSections(HTMLParser):
    """Collects headings and prose of an HTML page with their character offsets."""

    # Boilerplate (navigation, headers, footers), scripts and figure stubs carry no prose.
    SKIP: ClassVar[set[str]] = {
        "script", "style", "nav", "header", "footer", "aside", "noscript", "template",
        "figure", "svg", "form", "button", "head", "title",
    }  # fmt: skip
    BLOCK: ClassVar[set[str]] = {
        "p", "div", "section", "article", "main", "br", "table", "ul", "ol", "pre",
        "blockquote", "dl", "dd", "dt", "tr",
    }  # fmt: skip

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.skipping = 0
        self.heading: tuple[int, int, list[str]] | None = None  # level, start, parts
        self.heads: list[Heading] = []
        self.blocks: list[tuple[int, str]] = []  # (offset, text) in document order

    def position(self) -> int:
        line, col = self.getpos()
        return self.line_starts[line - 1] + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag) and not self.skipping:
            self.heading = (int(tag[1]), self.position(), [])
        elif tag == "li":
            self.blocks.append((self.position(), "\n- "))
        elif tag in ("td", "th"):
            self.blocks.append((self.position(), " | "))
        elif tag in self.BLOCK:
            self.blocks.append((self.position(), "\n\n"))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif self.heading and tag == f"h{self.heading[0]}":
            level, start, parts = self.heading
            self.heads.append((start, self.position(), level, " ".join("".join(parts).split())))
            self.heading = None
        elif tag in self.BLOCK or tag == "li":
            self.blocks.append((self.position(), "\n\n"))

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.heading:
            self.heading[2].append(data)
        else:
            self.blocks.append((self.position(), data))


def read_html(text: str, title: str) -> list[RawSection]:
    parser = _HTMLSections(text)
    parser.feed(text)
    parser.close()
    heads = [h for h in parser.heads if h[3]]
    # Prose pieces keyed by their source offset, so a section is the pieces between headings.
    pieces: dict[int, list[str]] = {}
    for offset, data in parser.blocks:
        pieces.setdefault(offset, []).append(data)
    order = sorted(pieces)

    def prose(lo: int, hi: int) -> str:
        i = bisect.bisect_left(order, lo)
        out = []
        while i < len(order) and order[i] < hi:
            out.extend(pieces[order[i]])
            i += 1
        return "".join(out)

    return split_by_headings(len(text), heads, prose, title)


def read_pdf(data: bytes, title: str) -> list[RawSection]:
    """Text of a PDF by page (pypdf), sectioned by its top-level outline when it has one."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise Unreadable("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        outline = _outline(reader)
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AttributeError) as e:
        raise Unreadable(f"corrupt PDF ({type(e).__name__}: {e})") from None
    if not pages:
        raise Unreadable("PDF has no pages")
    pages = drop_page_furniture(pages)
    meta_title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    starts = outline or [(0, str(meta_title or title))]
    sections = []
    for i, (first, heading) in enumerate(starts):
        last = starts[i + 1][0] - 1 if i + 1 < len(starts) else len(pages) - 1
        text = clean_text("\n\n".join(pages[first : last + 1]))
        if text:
            sections.append(RawSection((heading,), text, (first + 1, last + 1), "page"))
    if not sections:
        raise Unreadable("PDF has no extractable text (scanned images need OCR first)")
    return sections


def _outline(reader: object) -> list[tuple[int, str]]:
    """(first page index, title) of each top-level bookmark, in page order."""
    entries = []
    for item in getattr(reader, "outline", None) or []:
        if isinstance(item, list):
            continue  # nested bookmarks: sub-headings of the entry before
        try:
            page = reader.get_destination_page_number(item)  # type: ignore[attr-defined]
        except Exception:
            continue
        entries.append((page, str(item.title).strip()))
    entries = sorted({p: t for p, t in entries}.items())
    if entries and entries[0][0] > 0:
        entries.insert(0, (0, "Front matter"))
    return entries
