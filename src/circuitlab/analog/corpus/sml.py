# ruff: noqa: RUF001 (Greek letters and math signs are what SubML symbol tags stand for)
"""SubML, the markup of "Lessons In Electric Circuits", to plain text with headings.

SubML is XML-like but not XML (bare entity tags such as `<OMEGA>` and `<sp>`, unclosed
`<hr>`), so it is converted with regular expressions, in this order:
1. blocks that carry no prose are blanked with spaces of the same length, which keeps every
   character offset valid for provenance: editor comments, `<tex><htmlo>` blocks (an
   HTML-only copy of the table that follows them), figure stubs (`<image>`, `<imagenf>` with
   their captions), index entries, `<literal>` listings (SPICE netlists and their printouts,
   numbers without prose), LaTeX escapes;
2. headings (`chaptertitle`, `sectiontitle`, `subsectiontitle`) cut the file into sections;
3. inside a section, symbols become Unicode, sub/superscripts become `_x` / `^x`, list
   items become "- " lines, table rows "| a | b |" lines, and remaining tags are dropped.
"""

from __future__ import annotations

import re

SYMBOLS = {
    "OMEGA": "Ω", "omega": "ω", "mu": "μ", "beta": "β", "alpha": "α", "pi": "π", "PI": "Π",
    "DELTA": "Δ", "delta": "δ", "THETA": "Θ", "theta": "θ", "lambda": "λ", "tau": "τ",
    "phi": "φ", "PHI": "Φ", "epsilon": "ε", "sigma": "σ", "SIGMA": "Σ", "approxequal": "≈",
    "plusminus": "±", "lt": "<", "gt": ">", "leq": "≤", "geq": "≥", "times": "×",
    "cdot": "·", "infinity": "∞", "integral": "∫", "degree": "°", "copyright": "©",
    "sp": " ", "doubledash": "--", "angle": "∠", "sqrt": "√",
}  # fmt: skip

_BLANKED = [
    re.compile(r"<comment>.*?</comment>", re.S),
    re.compile(r"<tex>.*?</tex>", re.S),
    re.compile(r"<image(?:nf)?>.*?</image(?:nf)?>", re.S),
    re.compile(r"<index>.*?</index>", re.S),
    re.compile(r"<literal>.*?</literal>", re.S),
    re.compile(r"<latexin>.*?</latexin>", re.S),
    re.compile(r"<label>.*?</label>", re.S),
    re.compile(r"<pageref>.*?</pageref>", re.S),
    re.compile(r"<(?:hypertarget|cite)>.*?</(?:hypertarget|cite)>", re.S),
]
HEADING = re.compile(r"<(chapter|section|subsection)title\*?>(.*?)</\1title\*?>", re.S)
LEVELS = {"chapter": 1, "section": 2, "subsection": 3}

_INLINE = [
    (re.compile(r"<ref>[^<]*?\b(below|above)</ref>"), r" \1"),
    (re.compile(r"<ref>.*?</ref>", re.S), ""),
    (re.compile(r"<sub(?:script)?2?>(.*?)</sub(?:script)?2?>", re.S), r"_\1"),
    (re.compile(r"<sup(?:erscript)?2?>(.*?)</sup(?:erscript)?2?>", re.S), r"^\1"),
    (re.compile(r"<tabular>\{[^\n]*"), ""),
    (re.compile(r"<table>[^<\n]*"), ""),
    (re.compile(r"<caption>(.*?)</caption>", re.S), r"\n\nTable: \1\n\n"),
    (re.compile(r"<url>(.*?)</url>", re.S), r"\1"),
    (re.compile(r"<(?:para|quotation|itemize|enumerate|figure|tabular|table)>"), "\n\n"),
    (re.compile(r"</(?:para|quotation|itemize|enumerate|figure|tabular|table)>"), "\n\n"),
    (re.compile(r"<item>"), "\n- "),
    (re.compile(r"</item>"), "\n"),
    (re.compile(r"<tr>"), "\n|"),
    (re.compile(r"</t[dh]>"), " |"),
    (re.compile(r"``|''"), '"'),
]
_SYMBOL = re.compile(r"<(" + "|".join(SYMBOLS) + r")>")
_ANY_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*(?:\s[^<>]*)?>")


def blank_out(raw: str) -> str:
    """`raw` with non-prose blocks replaced by spaces (newlines kept): offsets stay valid."""

    def spaces(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    for pattern in _BLANKED:
        raw = pattern.sub(spaces, raw)
    return raw


def to_text(markup: str) -> str:
    """Inline SubML to plain text (not yet whitespace-normalised: see clean.clean_text)."""
    text = _SYMBOL.sub(lambda m: SYMBOLS[m.group(1)], markup)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return _ANY_TAG.sub("", text)


def title_text(markup: str) -> str:
    title = " ".join(to_text(markup).split())
    return title.title() if title.isupper() else title


def headings(blanked: str) -> list[tuple[int, int, int, str]]:
    """(start, end, level, title) of every heading in a blanked SubML file."""
    return [
        (m.start(), m.end(), LEVELS[m.group(1)], title_text(m.group(2)))
        for m in HEADING.finditer(blanked)
    ]
