"""Markdown (CommonMark plus pipe tables) to safe, self-contained HTML, for core.report.

markdown-it-py parses with raw HTML off, so nothing in a report.md can inject markup; the
tokens are adjusted before rendering: heading ids and levels, plots embedded as base64 data
URIs, links retargeted or dropped, HTML comments (editors' notes) left out. Every file read
goes through core.paths: one that leads out of `base_dir` is never read, and a plot that is
linked but missing or refused becomes a visible box and a warning, not an error.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token

from circuitlab.core.paths import OutsideRoot, resolve_inside

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}  # fmt: skip

@dataclass(frozen=True)
class Heading:
    level: int  # the HTML level after shifting
    id: str
    text: str  # plain text


@dataclass(frozen=True)
class Rendered:
    html: str
    headings: tuple[Heading, ...]
    plots: tuple[Heading, ...]  # every image or missing-plot box, with its anchor
    warnings: tuple[str, ...]


# ----------------------------------------------------------------------------- markdown


@dataclass
class _Context:
    """What one conversion needs besides the text, and what it collects."""

    base_dir: Path | None  # images and relative links are resolved against it
    link_dir: Path | None  # relative links are rewritten to be relative to it
    heading_shift: int = 0
    min_heading_level: int = 1
    id_prefix: str = ""
    headings: list[Heading] = field(default_factory=list)
    plots: list[Heading] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


def _comment_block(state: StateBlock, start: int, end: int, silent: bool) -> bool:
    """`<!-- ... -->` from the start of a line: dropped (with raw HTML off, markdown-it
    would show it as text, and the systems' reports use comments as markers)."""
    pos = state.bMarks[start] + state.tShift[start]
    if state.sCount[start] - state.blkIndent >= 4 or not state.src.startswith("<!--", pos):
        return False
    if not silent:
        close, line = state.src.find("-->", pos + 4), start
        while line < end - 1 and (close < 0 or state.eMarks[line] < close):
            line += 1
        state.line = line + 1
    return True


def escape_text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _code(self: object, tokens: Sequence[Token], idx: int, options: object, env: object) -> str:
    """Fenced and indented code, without the trailing newline markdown-it keeps."""
    token = tokens[idx]
    language = token.info.split()[0] if token.info.strip() else ""
    attr = f' class="language-{_attr(language)}"' if language else ""
    return f"<pre><code{attr}>{escape_text(token.content.removesuffix(chr(10)))}</code></pre>\n"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "xhtmlOut": False}).enable("table")
    md.disable("entity")  # `&amp;` in a report.md is shown as typed, like all other text
    md.validateLink = lambda url: True  # schemes are judged in _href, which keeps the text
    md.block.ruler.before("table", "comment", _comment_block,
                          {"alt": ["paragraph", "reference", "blockquote", "list"]})  # fmt: skip
    rules = {
        "text": lambda self, tokens, idx, options, env: escape_text(tokens[idx].content),
        "code_inline": lambda self, t, i, o, e: f"<code>{escape_text(t[i].content)}</code>",
        "fence": _code,
        "code_block": _code,
        "table_open": lambda *_: '<div class="table-wrap"><table>\n',
        "table_close": lambda *_: "</table></div>\n",
    }
    for name, rule in rules.items():
        md.add_render_rule(name, rule)
    return md


MARKDOWN = _parser()
_ALIGN = {"text-align:right": "r", "text-align:center": "c", "text-align:left": "l"}


def markdown_to_html(
    text: str,
    *,
    base_dir: str | Path | None = None,
    link_dir: str | Path | None = None,
    heading_shift: int = 0,
    min_heading_level: int = 1,
    id_prefix: str = "",
) -> Rendered:
    """Convert markdown to an HTML fragment.

    Images are read from inside `base_dir` (default: the working directory) and embedded
    as data URIs; relative links are rewritten from `base_dir` to `link_dir` (left as
    written when either is None). Heading levels move by `heading_shift` (kept within
    `min_heading_level`..6) and their ids start with `id_prefix`.
    """
    as_path = lambda p: Path(p) if p is not None else None  # noqa: E731
    ctx = _Context(as_path(base_dir), as_path(link_dir), heading_shift, min_heading_level,
                   id_prefix)  # fmt: skip
    tokens = MARKDOWN.parse(text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            _heading(token, tokens[i + 1], tokens[i + 2], ctx)
        elif token.type in ("th_open", "td_open") and "style" in token.attrs:
            align = _ALIGN.get(str(token.attrs.pop("style")))
            if align:
                token.attrSet("class", align)
        elif token.type == "inline" and token.children:
            token.children = _inline(token.children, ctx)
    body = MARKDOWN.renderer.render(tokens, MARKDOWN.options, {}).rstrip("\n")
    return Rendered(body, tuple(ctx.headings), tuple(ctx.plots), tuple(ctx.warnings))


def _plain(children: Sequence[Token] | None) -> str:
    return MARKDOWN.renderer.renderInlineAsText(children, MARKDOWN.options, {})


def _heading(opening: Token, inline: Token, closing: Token, ctx: _Context) -> None:
    level = min(6, max(ctx.min_heading_level, int(opening.tag[1:]) + ctx.heading_shift))
    opening.tag = closing.tag = f"h{level}"
    plain = _plain(inline.children).strip()
    base = ctx.id_prefix + (re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-") or "section")
    anchor, n = base, 1
    while anchor in ctx.ids:
        n += 1
        anchor = f"{base}-{n}"
    ctx.ids.add(anchor)
    opening.attrSet("id", anchor)
    ctx.headings.append(Heading(level, anchor, plain))


def _inline(children: list[Token], ctx: _Context) -> list[Token]:
    """Images become embedded <img> or boxes; links are retargeted, or dropped (keeping
    their text) when they would lead somewhere a report should not."""
    out, dropped = [], False
    for token in children:
        if token.type == "image":
            out.append(Token("html_inline", "", 0, content=_image(token, ctx)))
        elif token.type == "link_open":
            href = _href(str(token.attrGet("href") or ""), ctx)
            dropped = href is None
            if href is not None:
                token.attrSet("href", href)
                out.append(token)
        elif not (token.type == "link_close" and dropped):
            out.append(token)
    return out


def link_scheme(target: str) -> str:
    try:
        return urlsplit(target).scheme.lower()
    except ValueError:  # e.g. a malformed IPv6 host
        return "invalid"


def _href(target: str, ctx: _Context) -> str | None:
    scheme = link_scheme(target)
    if target.startswith("#") or scheme in ("http", "https", "mailto"):
        return target
    if scheme or not target:
        return None  # javascript:, data:, file: and the like are not links in a report
    if ctx.base_dir is None or ctx.link_dir is None:
        return target
    return moved_link(target, ctx.base_dir, ctx.link_dir)


def moved_link(target: str, base_dir: Path, target_dir: Path) -> str:
    """A relative link from `base_dir`, rewritten to lead to the same file from `target_dir`."""
    path, _, fragment = target.partition("#")
    relative = Path(os.path.relpath(base_dir / unquote(path), target_dir)).as_posix()
    return quote(relative) + (f"#{fragment}" if fragment else "")


def _image(token: Token, ctx: _Context) -> str:
    src, alt = str(token.attrGet("src") or ""), _plain(token.children)
    name = unquote(src) or "(empty link)"
    anchor = f"{ctx.id_prefix}plot-{len(ctx.plots) + 1}"
    ctx.plots.append(Heading(0, anchor, alt or Path(name).name))

    def box(message: str, warning: str) -> str:
        ctx.warnings.append(warning)
        return (f'<span class="missing" id="{anchor}" role="img" aria-label="{_attr(message)}">'
                f"{escape_text(message)}</span>")  # fmt: skip

    scheme = link_scheme(src)
    if scheme == "data" and src.lower().startswith("data:image/"):
        data_uri = src
    elif scheme and len(scheme) > 1:  # a URL; one letter is a Windows drive
        return box(f"external image not embedded: {name}",
                   f"image {src} is not a local file: not embedded (no network)")  # fmt: skip
    else:
        try:
            path = resolve_inside(ctx.base_dir or Path.cwd(), name)
        except OutsideRoot as e:
            return box(f"not embedded: {name} (outside the run directory)",
                       f"plot {name} not embedded: {e.reason}")  # fmt: skip
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if not path.is_file():
            return box(f"missing plot: {name}", f"missing plot: {name} (looked for {path})")
        if mime is None:
            return box(f"unsupported image type: {name}",
                       f"{path} is not an image type a browser shows: not embedded")  # fmt: skip
        try:
            data = path.read_bytes()
        except OSError as e:
            return box(f"unreadable plot: {name}", f"cannot read plot {path}: {e.strerror or e}")
        data_uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    title = token.attrGet("title")
    title_attr = f' title="{_attr(str(title))}"' if title else ""
    return (f'<img class="plot" id="{anchor}" src="{_attr(data_uri)}" alt="{_attr(alt)}"'
            f'{title_attr} data-name="{_attr(name)}">')  # fmt: skip


def inline_title(title: str, base_dir: Path) -> str:
    """A section title's markdown (code spans, emphasis) as HTML."""
    tokens = MARKDOWN.parseInline(title)
    for token in tokens:
        token.children = _inline(token.children or [], _Context(base_dir, None))
    return MARKDOWN.renderer.render(tokens, MARKDOWN.options, {})


# ------------------------------------------------------------------------------ report
