"""One self-contained report from the report.md files of one or more run directories.

`build_report([dir, ...], out)` writes

    OUT.html   one page, one section per run directory (titled by its report.md's first
               heading, with its own table of contents), every plot embedded as a base64
               data URI, CSS inline: it opens from a mail attachment or a USB stick, and the
               browser loads nothing from anywhere (a Content-Security-Policy says so)
    OUT.md     the same sections as one markdown file, image links rewritten to point from
               OUT's directory to the run directories

The markdown is converted by the small converter below, written for the subset the
systems' reports use: ATX headings, paragraphs, pipe tables with alignment, fenced code,
nested lists, block quotes, rules, code spans, emphasis, links and images; HTML comments
are dropped. Everything else (indented code blocks, raw HTML, reference-style links,
setext headings) is shown as text: all text is escaped, so nothing in a report.md can
inject markup. Images at the top of a run directory that its report.md does not show are
appended to its section, so no plot a run made is left out.

Every file read from a run directory (report.md, config.json, plots) goes through
core.paths: a `../`, absolute or symlinked path that leads out of the run directory is
never read; a linked one becomes a "not embedded" box and a warning with the reason, an
unlinked image-named symlink out is only a warning.

A plot that a report.md links but that is not there becomes a visible "missing plot: NAME"
box in the page and a warning in `Report.warnings`, not an error. A small inline script
checks in the browser that every image decoded and records the result on <body>
(`data-report-status="ok"`), which is how the tests check the page in a real browser.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_text
from circuitlab.core.paths import OutsideRoot, files_inside, resolve_inside

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}
CONFIG_LIMIT = 20_000  # characters of config.json shown per section


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


@dataclass(frozen=True)
class Section:
    run_dir: Path
    title: str
    body: str  # the report.md without its first heading
    config: str | None = None  # config.json, pretty-printed and cut at CONFIG_LIMIT
    warnings: tuple[str, ...] = ()  # files of the run directory refused by core.paths


@dataclass(frozen=True)
class Report:
    html: Path
    markdown: Path
    sections: tuple[Section, ...]
    warnings: tuple[str, ...]


# ----------------------------------------------------------------------------- markdown


@dataclass
class _Context:
    """What one conversion needs besides the text, and what it collects."""

    base_dir: Path | None  # images and relative links are resolved against it
    link_dir: Path | None  # relative links are rewritten to be relative to it
    heading_shift: int
    min_heading_level: int
    id_prefix: str
    headings: list[Heading] = field(default_factory=list)
    plots: list[Heading] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


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

    Images are read from `base_dir` (default: the working directory) and embedded as data
    URIs; relative links are rewritten from `base_dir` to `link_dir` (left as written when
    either is None). Heading levels move by `heading_shift` (kept within
    `min_heading_level`..6) and their ids start with `id_prefix`.
    """
    ctx = _Context(
        base_dir=Path(base_dir) if base_dir is not None else None,
        link_dir=Path(link_dir) if link_dir is not None else None,
        heading_shift=heading_shift,
        min_heading_level=min_heading_level,
        id_prefix=id_prefix,
    )
    body = _blocks(text.replace("\r\n", "\n").replace("\t", "    ").split("\n"), ctx)
    return Rendered(body, tuple(ctx.headings), tuple(ctx.plots), tuple(ctx.warnings))


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_QUOTE = re.compile(r"^ {0,3}> ?(.*)$")
_ITEM = re.compile(r"^( *)([-*+]|\d{1,9}[.)])( +|$)(.*)$")
_DELIMITER = re.compile(r"^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$")
_COMMENT_START = re.compile(r"^ {0,3}<!--")


def _blocks(lines: list[str], ctx: _Context) -> str:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif _COMMENT_START.match(line):  # an HTML comment: a note for editors, not shown
            while i < len(lines) and "-->" not in lines[i]:
                i += 1
            i += 1
        elif fence := _FENCE.match(line):
            i = _code_block(lines, i, fence, out)
        elif heading := _HEADING.match(line):
            out.append(_heading(len(heading.group(1)), heading.group(2) or "", ctx))
            i += 1
        elif _RULE.match(line):
            out.append("<hr>")
            i += 1
        elif _is_table_start(lines, i):
            i = _table(lines, i, out, ctx)
        elif _QUOTE.match(line):
            quoted = []
            while i < len(lines) and (match := _QUOTE.match(lines[i])):
                quoted.append(match.group(1))
                i += 1
            out.append(f"<blockquote>\n{_blocks(quoted, ctx)}\n</blockquote>")
        elif _ITEM.match(line):
            i = _list(lines, i, out, ctx)
        else:
            paragraph = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(chr(10).join(paragraph), ctx)}</p>")
    return "\n".join(out)


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(
        _FENCE.match(line)
        or _HEADING.match(line)
        or _RULE.match(line)
        or _QUOTE.match(line)
        or _ITEM.match(line)
        or _COMMENT_START.match(line)
        or _is_table_start(lines, i)
    )


def _code_block(lines: list[str], i: int, fence: re.Match[str], out: list[str]) -> int:
    marker, language = fence.group(1), fence.group(2)
    indent = len(lines[i]) - len(lines[i].lstrip(" "))
    code = []
    i += 1
    while i < len(lines):
        closing = lines[i].strip()
        if closing.startswith(marker[0] * len(marker)) and not closing.strip(marker[0]):
            i += 1
            break
        code.append(_dedent(lines[i], indent))
        i += 1
    attr = f' class="language-{_attr(language)}"' if language else ""
    out.append(f"<pre><code{attr}>{_text(chr(10).join(code))}</code></pre>")
    return i


def _dedent(line: str, width: int) -> str:
    strip = min(width, len(line) - len(line.lstrip(" ")))
    return line[strip:]


def _heading(level: int, raw: str, ctx: _Context) -> str:
    level = min(6, max(ctx.min_heading_level, level + ctx.heading_shift))
    inner = _inline(raw.strip(), ctx)
    plain = _strip_tags(inner)
    base = ctx.id_prefix + (re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-") or "section")
    anchor, n = base, 1
    while anchor in ctx.ids:
        n += 1
        anchor = f"{base}-{n}"
    ctx.ids.add(anchor)
    ctx.headings.append(Heading(level, anchor, plain))
    return f'<h{level} id="{anchor}">{inner}</h{level}>'


# tables ------------------------------------------------------------------------------


def _split_row(line: str) -> list[str]:
    """Cells of a pipe-table row; `\\|` is a literal pipe (also inside code spans)."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [cell.strip().replace("\\|", "|") for cell in cells]


def _is_table_start(lines: list[str], i: int) -> bool:
    if i + 1 >= len(lines) or "|" not in lines[i] or not _DELIMITER.match(lines[i + 1]):
        return False
    if "|" not in lines[i + 1] and len(_split_row(lines[i])) != 1:
        return False
    return len(_split_row(lines[i])) == len(_split_row(lines[i + 1]))


def _table(lines: list[str], i: int, out: list[str], ctx: _Context) -> int:
    header = _split_row(lines[i])
    aligns = []
    for spec in _split_row(lines[i + 1]):
        left, right = spec.startswith(":"), spec.endswith(":")
        aligns.append("c" if left and right else "r" if right else "l" if left else "")
    i += 2
    rows = []
    while i < len(lines) and "|" in lines[i] and not _interrupts_table(lines[i]):
        cells = _split_row(lines[i])
        rows.append((cells + [""] * len(header))[: len(header)])
        i += 1

    def cell(tag: str, text: str, align: str) -> str:
        cls = f' class="{align}"' if align else ""
        return f"<{tag}{cls}>{_inline(text, ctx)}</{tag}>"

    parts = ['<div class="table-wrap"><table>', "<thead><tr>"]
    parts += [cell("th", h, a) for h, a in zip(header, aligns, strict=True)]
    parts.append("</tr></thead>")
    if rows:
        parts.append("<tbody>")
        for row in rows:
            cells = "".join(cell("td", c, a) for c, a in zip(row, aligns, strict=True))
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody>")
    parts.append("</table></div>")
    out.append("\n".join(parts))
    return i


def _interrupts_table(line: str) -> bool:
    return bool(_FENCE.match(line) or _HEADING.match(line) or _QUOTE.match(line))


# lists -------------------------------------------------------------------------------


def _list(lines: list[str], i: int, out: list[str], ctx: _Context) -> int:
    first = _ITEM.match(lines[i])
    assert first is not None
    indent = len(first.group(1))
    ordered = first.group(2)[0].isdigit()
    items: list[list[str]] = []
    loose = False
    while i < len(lines):
        match = _ITEM.match(lines[i])
        if not (
            match
            and len(match.group(1)) == indent
            and match.group(2)[0].isdigit() == ordered
            and not _RULE.match(lines[i])
        ):
            break
        content_indent = len(match.group(1)) + len(match.group(2)) + max(1, len(match.group(3)))
        item = [match.group(4)]
        i += 1
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                # a blank line continues the item only if indented content follows
                j = i
                while j < len(lines) and not lines[j].strip():
                    j += 1
                if j < len(lines) and _indent(lines[j]) > indent:
                    item += [""] * (j - i)
                    i = j
                    loose = loose or not _ITEM.match(lines[j])
                    continue
                if j < len(lines) and _same_list(lines[j], indent, ordered):
                    loose = True
                    i = j
                break
            if _indent(line) > indent:
                item.append(_dedent(line, content_indent))
                i += 1
            elif not _starts_block(lines, i) and not _ITEM.match(line):
                item.append(line.strip())  # a lazy continuation of the item's paragraph
                i += 1
            else:
                break
        items.append(item)
        if i < len(lines) and not _same_list(lines[i], indent, ordered):
            break
    start = int(first.group(2)[:-1]) if ordered else 1
    tag = "ol" if ordered else "ul"
    opening = f'<ol start="{start}">' if ordered and start != 1 else f"<{tag}>"
    parts = [opening]
    for item in items:
        inner = _blocks(item, ctx)
        if not loose and inner.startswith("<p>") and "</p>" in inner:
            end = inner.index("</p>")
            inner = inner[3:end] + inner[end + 4 :]  # a tight item: no paragraph around its text
        parts.append(f"<li>{inner}</li>")
    parts.append(f"</{tag}>")
    out.append("\n".join(parts))
    return i


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _same_list(line: str, indent: int, ordered: bool) -> bool:
    match = _ITEM.match(line)
    return bool(
        match
        and len(match.group(1)) == indent
        and match.group(2)[0].isdigit() == ordered
        and not _RULE.match(line)
    )


# inline ------------------------------------------------------------------------------

_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_LINK = re.compile(
    r"\[((?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\]"  # [text], one level of nested brackets
    r"\(\s*(<[^<>\n]*>|(?:[^\s()\\]|\\.|\([^\s()]*\))*)"  # (destination
    r"(?:\s+(\"[^\"]*\"|'[^']*'))?\s*\)"  # "optional title")
)


def _inline(text: str, ctx: _Context) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _PUNCTUATION:
            out.append(_text(text[i + 1]))
            i += 2
        elif c == "\\" and i + 1 < n and text[i + 1] == "\n":
            out.append("<br>\n")
            i += 2
        elif c == "`":
            run = len(text[i:]) - len(text[i:].lstrip("`"))
            ticks = text[i : i + run]
            close = re.compile(rf"(?<!`){ticks}(?!`)").search(text, i + run)
            if close is None:
                out.append(ticks)
                i += run
                continue
            code = text[i + run : close.start()].replace("\n", " ")
            if len(code) > 2 and code[0] == code[-1] == " " and code.strip():
                code = code[1:-1]
            out.append(f"<code>{_text(code)}</code>")
            i = close.end()
        elif c == "!" and (link := _LINK.match(text, i + 1)):
            alt = _plain(link.group(1))
            out.append(_image(alt, _destination(link.group(2)), _title(link.group(3)), ctx))
            i = link.end()
        elif c == "[" and (link := _LINK.match(text, i)):
            out.append(_link(link.group(1), _destination(link.group(2)), _title(link.group(3)),
                             ctx))  # fmt: skip
            i = link.end()
        elif (c in "*_") and (emphasis := _emphasis(text, i)):
            tag, inner, end = emphasis
            out.append(f"<{tag}>{_inline(inner, ctx)}</{tag}>")
            i = end
        else:
            out.append(_text(c))
            i += 1
    return "".join(out)


def _emphasis(text: str, i: int) -> tuple[str, str, int] | None:
    """`**strong**`, `*em*`, and `_em_`/`__strong__` only between word boundaries (so that
    `f1_at_k` stays a name)."""
    c = text[i]
    double = text.startswith(c * 2, i)
    width = 2 if double else 1
    opening = text[i + width : i + width + 1]
    if not opening or opening.isspace() or opening == c:
        return None
    if c == "_" and i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        return None
    pattern = re.escape(c * width)
    for close in re.finditer(rf"(?<=\S){pattern}", text[i + width :]):
        end = i + width + close.end()
        if double is False and text.startswith(c, end):
            continue  # part of a longer run
        if c == "_" and end < len(text) and (text[end].isalnum() or text[end] == "_"):
            continue
        inner = text[i + width : i + width + close.start()]
        if inner:
            return ("strong" if double else "em"), inner, end
    return None


def _destination(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", raw)


def _title(raw: str | None) -> str:
    return raw[1:-1] if raw else ""


def _plain(label: str) -> str:
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", label).replace("`", "")


def _link(label: str, target: str, title: str, ctx: _Context) -> str:
    inner = _inline(label, ctx)
    scheme = urlsplit(target).scheme.lower()
    if target.startswith("#") or scheme in ("http", "https", "mailto"):
        href = target
    elif scheme or not target:
        return inner  # javascript:, data:, file: and the like are not links in a report
    elif ctx.base_dir is not None and ctx.link_dir is not None:
        path, _, fragment = target.partition("#")
        relative = os.path.relpath(ctx.base_dir / unquote(path), ctx.link_dir)
        href = quote(Path(relative).as_posix()) + (f"#{fragment}" if fragment else "")
    else:
        href = target
    title_attr = f' title="{_attr(title)}"' if title else ""
    return f'<a href="{_attr(href)}"{title_attr}>{inner}</a>'


def _image(alt: str, src: str, title: str, ctx: _Context) -> str:
    name = unquote(src) or "(empty link)"
    anchor = f"{ctx.id_prefix}plot-{len(ctx.plots) + 1}"
    ctx.plots.append(Heading(0, anchor, alt or Path(name).name))
    scheme = urlsplit(src).scheme.lower()
    if scheme == "data" and src.lower().startswith("data:image/"):
        data_uri = src
    elif scheme and len(scheme) > 1:  # a URL; one letter is a Windows drive
        ctx.warnings.append(f"image {src} is not a local file: not embedded (no network)")
        return _missing(f"external image not embedded: {name}", anchor)
    else:
        try:
            path = resolve_inside(ctx.base_dir or Path.cwd(), unquote(src))
        except OutsideRoot as e:
            ctx.warnings.append(f"plot {name} not embedded: {e.reason}")
            return _missing(f"not embedded: {name} (outside the run directory)", anchor)
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if not path.is_file():
            ctx.warnings.append(f"missing plot: {name} (looked for {path})")
            return _missing(f"missing plot: {name}", anchor)
        if mime is None:
            ctx.warnings.append(f"{path} is not an image type a browser shows: not embedded")
            return _missing(f"unsupported image type: {name}", anchor)
        try:
            data = path.read_bytes()
        except OSError as e:
            ctx.warnings.append(f"cannot read plot {path}: {e.strerror or e}")
            return _missing(f"unreadable plot: {name}", anchor)
        data_uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    title_attr = f' title="{_attr(title)}"' if title else ""
    return (
        f'<img class="plot" id="{anchor}" src="{data_uri}" alt="{_attr(alt)}"{title_attr} '
        f'data-name="{_attr(name)}">'
    )


def _missing(message: str, anchor: str) -> str:
    return (
        f'<span class="missing" id="{anchor}" role="img" aria-label="{_attr(message)}">'
        f"{_text(message)}</span>"
    )


def _strip_tags(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _inline_title(title: str) -> str:
    """A section title's markdown (code spans, emphasis) as HTML."""
    return _inline(title, _Context(None, None, 0, 1, ""))


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


# ------------------------------------------------------------------------------ report


def load_sections(run_dirs: Sequence[str | Path]) -> tuple[Section, ...]:
    """Read each run directory's report.md; a bad directory is a CircuitlabError.

    Images at the top of a run directory that its report.md does not show are appended to
    its section under "Other plots in this run directory".
    """
    if not run_dirs:
        raise CircuitlabError("no run directories given: pass at least one RUN_DIR")
    sections = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.exists():
            raise CircuitlabError(f"no such run directory: {run_dir}")
        if not run_dir.is_dir():
            raise CircuitlabError(f"{run_dir} is not a directory: pass run directories")
        try:
            report = resolve_inside(run_dir, "report.md")
        except OutsideRoot as e:
            raise CircuitlabError(f"{run_dir}/report.md is not read: {e.reason}") from None
        if not report.is_file():
            raise CircuitlabError(
                f"{run_dir} has no report.md: pass a run directory whose job has finished"
            )
        try:
            text = report.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CircuitlabError(f"cannot read {report}: {e}") from None
        title, body = _split_title(text)
        extra, warnings = _unlinked_plots(run_dir, body)
        config, config_warnings = _config_json(run_dir)
        sections.append(
            Section(run_dir, title or run_dir.name, body + extra, config,
                    tuple(warnings + config_warnings))
        )  # fmt: skip
    return tuple(sections)


def _unlinked_plots(run_dir: Path, body: str) -> tuple[str, list[str]]:
    """Markdown showing the images at the top of `run_dir` that `body` does not show, so
    that no plot a run made is left out of its report; and a warning for each image-named
    symlink that leads out of `run_dir` (never shown)."""
    shown, linked = set(), set()
    for match in _LINK_TARGET.finditer(body):
        if match.group(1).startswith("!") and not urlsplit(match.group(2)).scheme:
            linked.add(os.path.normpath(unquote(match.group(2))))
            with contextlib.suppress(OutsideRoot):  # refused where it is linked
                shown.add(resolve_inside(run_dir, unquote(match.group(2))))
    walk = files_inside(run_dir, suffixes=IMAGE_TYPES, recursive=False)
    warnings = [f"plot {s.path.name} not embedded: {s.reason}" for s in walk.skipped
                if s.path.name not in linked]  # fmt: skip
    real = run_dir.resolve()
    extra = sorted(path.relative_to(real).as_posix() for path in walk.files if path not in shown)
    if not extra:
        return "", warnings
    images = "\n\n".join(f"![{Path(name).stem}]({quote(name)})" for name in extra)
    return f"\n\n## Other plots in this run directory\n\n{images}\n", warnings


def _split_title(text: str) -> tuple[str, str]:
    """The first heading (outside code blocks) and the text without it."""
    lines = text.replace("\r\n", "\n").split("\n")
    fence = None
    for i, line in enumerate(lines):
        if match := _FENCE.match(line):
            if fence is None:
                fence = match.group(1)[0]
            elif line.strip().startswith(fence * 3):
                fence = None
            continue
        if fence is None and (heading := _HEADING.match(line)) and heading.group(2):
            return heading.group(2).strip(), "\n".join(lines[:i] + lines[i + 1 :])
    return "", text


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    markdown_out: str | Path | None = None,
    title: str = "circuitlab report",
    command: str | None = None,
) -> Report:
    """Write the HTML report (default: FIRST_RUN_DIR/report.html) and the combined markdown.

    The markdown goes next to the HTML with suffix .md, unless that is one of the inputs'
    report.md (never overwritten): then it is NAME.combined.md. `command` is how a reader
    rebuilds the report (default: the `circuitlab report` command for these arguments).
    """
    sections = load_sections(run_dirs)
    out = Path(out) if out is not None else sections[0].run_dir / "report.html"
    if out.is_dir():
        out = out / "report.html"
    inputs = {(s.run_dir / "report.md").resolve() for s in sections}
    if out.resolve() in inputs:
        raise CircuitlabError(f"{out} is an input report: choose another --out")
    if markdown_out is None:
        markdown_out = out.with_suffix(".md")
        if markdown_out.resolve() in inputs:
            markdown_out = out.with_name(out.stem + ".combined.md")
    markdown_out = Path(markdown_out)
    if markdown_out.resolve() in inputs:
        raise CircuitlabError(f"{markdown_out} is an input report: choose another output")
    if command is None:
        dirs = " ".join(shlex.quote(str(s.run_dir)) for s in sections)
        command = f"circuitlab report {dirs} --out {shlex.quote(str(out))}"

    rendered = []
    warnings: list[str] = []
    for number, section in enumerate(sections, start=1):
        # the section title is an <h2>; the report's own headings go below it
        result = markdown_to_html(
            section.body,
            base_dir=section.run_dir,
            link_dir=out.parent,
            heading_shift=1,
            min_heading_level=3,
            id_prefix=f"s{number}-",
        )
        rendered.append(result)
        warnings += [f"{section.run_dir}: {w}" for w in (*result.warnings, *section.warnings)]

    atomic_write_text(out, _page(title, command, sections, rendered, warnings))
    atomic_write_text(markdown_out, _combined_markdown(title, command, sections, markdown_out))
    return Report(out, markdown_out, sections, tuple(warnings))


def _config_json(run_dir: Path) -> tuple[str | None, list[str]]:
    try:
        path = resolve_inside(run_dir, "config.json")
    except OutsideRoot as e:
        return None, [f"config.json not embedded: {e.reason}"]
    if not path.is_file():
        return None, []
    try:
        text = json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=2)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, []
    if len(text) > CONFIG_LIMIT:
        text = text[:CONFIG_LIMIT] + f"\n... (cut at {CONFIG_LIMIT} characters; see {path})"
    return text, []


def _page(
    title: str,
    command: str,
    sections: Sequence[Section],
    rendered: Sequence[Rendered],
    warnings: Sequence[str],
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # nothing may be loaded from anywhere: images are data URIs, style and script inline
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_WATCH_SCRIPT}</script>",
        "</head>",
        '<body data-report-status="loading">',
        "<header>",
        f"<h1>{_text(title)}</h1>",
        f"<p>Rebuild this report: <code>{_text(command)}</code></p>",
    ]
    if warnings:
        parts.append('<div class="warnings"><strong>Built with warnings:</strong><ul>')
        parts += [f"<li>{_text(w)}</li>" for w in warnings]
        parts.append("</ul></div>")
    parts.append('<nav class="toc" aria-label="sections"><strong>Sections</strong><ol>')
    parts += [f'<li><a href="#s{n}">{_inline_title(s.title)}</a></li>'
              for n, s in enumerate(sections, start=1)]  # fmt: skip
    parts += ["</ol></nav>", "</header>", "<main>"]
    for number, (section, result) in enumerate(zip(sections, rendered, strict=True), start=1):
        parts.append(f'<section id="s{number}">')
        parts.append(f"<h2>{_inline_title(section.title)}</h2>")
        parts.append(
            f'<p class="source">Run directory: <code>{_text(str(section.run_dir))}</code></p>'
        )
        config = section.config
        parts.append(_section_toc(number, result, config is not None))
        parts.append(result.html)
        if config is not None:
            parts.append(f'<details id="s{number}-config"><summary>Configuration (config.json)'
                         "</summary>")  # fmt: skip
            parts.append(f'<pre><code class="language-json">{_text(config)}</code></pre></details>')
        parts.append("</section>")
    parts += ["</main>", f"<script>{_CHECK_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _section_toc(number: int, result: Rendered, has_config: bool) -> str:
    parts = ['<nav class="toc" aria-label="contents"><strong>Contents</strong>']
    if result.headings:
        parts.append(_toc(result.headings))
    links = [f'<a href="#{p.id}">{_text(p.text)}</a>' for p in result.plots]
    if links:
        parts.append(f"<p>Plots: {', '.join(links)}</p>")
    if has_config:
        parts.append(f'<p><a href="#s{number}-config">Configuration (config.json)</a></p>')
    if len(parts) == 1:
        parts.append("<p>(no headings, plots or configuration)</p>")
    parts.append("</nav>")
    return "".join(parts)


def _toc(headings: Sequence[Heading]) -> str:
    """Nested lists following the heading levels."""
    out: list[str] = []
    levels: list[int] = []  # the level of each open <ul>
    for h in headings:
        if not levels or h.level > levels[-1]:
            out.append("<ul>")
            levels.append(h.level)
        else:
            out.append("</li>")
            while len(levels) > 1 and h.level < levels[-1]:
                out.append("</ul></li>")
                levels.pop()
        out.append(f'<li><a href="#{h.id}">{_text(h.text)}</a>')
    out.append("</li>")
    while levels:
        levels.pop()
        out.append("</ul></li>" if levels else "</ul>")
    return "".join(out)


def _combined_markdown(
    title: str, command: str, sections: Sequence[Section], markdown_out: Path
) -> str:
    lines = [f"# {title}", "", f"Rebuild this report: `{command}`", ""]
    lines += [f"{n}. {s.title}" for n, s in enumerate(sections, start=1)]
    for section in sections:
        lines += ["", f"## {section.title}", "", f"Run directory: `{section.run_dir}`", ""]
        lines.append(_relocate(section.body, section.run_dir, markdown_out.parent).strip())
        config = section.config
        if config is not None:
            lines += ["", "Configuration (config.json):", "", "```json", config, "```"]
    return "\n".join(lines) + "\n"


_CODE_SPAN = re.compile(r"(`+).*?(?<!`)\1(?!`)")
_LINK_TARGET = re.compile(r"(!?\[(?:[^\[\]\\]|\\.)*\]\(\s*<?)([^\s)>]+)")


def _relocate(text: str, base_dir: Path, target_dir: Path) -> str:
    """Move headings below the section title (as in the HTML) and rewrite relative image
    and link targets from base_dir to target_dir, outside code."""

    def retarget(match: re.Match[str]) -> str:
        target = match.group(2)
        if target.startswith("#") or urlsplit(target).scheme:
            return match.group(0)
        path, _, fragment = target.partition("#")
        relative = Path(os.path.relpath(base_dir / unquote(path), target_dir)).as_posix()
        return match.group(1) + quote(relative) + (f"#{fragment}" if fragment else "")

    out, fence = [], None
    for line in text.split("\n"):
        if match := _FENCE.match(line):
            if fence is None:
                fence = match.group(1)[0]
            elif line.strip().startswith(fence * 3):
                fence = None
            out.append(line)
            continue
        if fence is not None:
            out.append(line)
            continue
        if (heading := _HEADING.match(line)) and heading.group(2):
            level = min(6, max(3, len(heading.group(1)) + 1))
            line = "#" * level + " " + heading.group(2)
        pieces, last = [], 0
        for code in _CODE_SPAN.finditer(line):
            pieces.append(_LINK_TARGET.sub(retarget, line[last : code.start()]))
            pieces.append(code.group(0))
            last = code.end()
        pieces.append(_LINK_TARGET.sub(retarget, line[last:]))
        out.append("".join(pieces))
    return "\n".join(out)


_CSS = """
:root { color-scheme: light; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; line-height: 1.5;
  color: #1d1d1f; background: #fff; }
h1 { font-size: 1.9rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { font-size: 1.5rem; margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.2rem; margin-top: 1.8rem; }
h4, h5, h6 { font-size: 1rem; }
section { margin-bottom: 3rem; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .9em;
  background: #f3f3f5; padding: .1em .3em; border-radius: 3px; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: .8rem;
  overflow-x: auto; line-height: 1.35; }
pre code { background: none; padding: 0; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { border: 1px solid #c9ccd1; padding: .3rem .6rem; vertical-align: top; }
th { background: #eef0f3; text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
.r { text-align: right; font-variant-numeric: tabular-nums; }
.c { text-align: center; }
.l { text-align: left; }
img.plot { display: block; max-width: 100%; height: auto; margin: 1rem 0;
  border: 1px solid #eee; }
.missing { display: block; margin: 1rem 0; padding: 1.5rem; border: 2px dashed #c0392b;
  color: #c0392b; background: #fdf2f2; font-weight: bold; text-align: center; }
.warnings { border-left: 4px solid #e67e22; background: #fef5e7; padding: .5rem 1rem; }
nav.toc { background: #f7f7f9; border: 1px solid #e5e5ea; border-radius: 4px;
  padding: .5rem 1rem; margin: 1rem 0; font-size: .95rem; }
nav.toc ul, nav.toc ol { margin: .2rem 0; }
nav.toc p { margin: .3rem 0; }
.source { color: #555; font-size: .9rem; }
blockquote { border-left: 4px solid #ddd; margin: 1rem 0; padding: 0 1rem; color: #444; }
details { margin: 1rem 0; }
summary { cursor: pointer; color: #333; }
"""

# Runs first: records script errors and anything the Content-Security-Policy blocked.
_WATCH_SCRIPT = """
(function () {
  var root = document.documentElement;
  root.setAttribute("data-js-errors", "0");
  root.setAttribute("data-blocked", "0");
  window.addEventListener("error", function (event) {
    if (event.target === window || event instanceof ErrorEvent) {
      root.setAttribute("data-js-errors", String(+root.getAttribute("data-js-errors") + 1));
    }
  }, true);
  document.addEventListener("securitypolicyviolation", function (event) {
    root.setAttribute("data-blocked", String(+root.getAttribute("data-blocked") + 1));
    root.setAttribute("data-blocked-uri", String(event.blockedURI));
  });
})();
"""

# Runs when everything has loaded: every plot must have decoded; one that did not gets a
# visible box, and <body> records the verdict for a reader and for the browser tests.
_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  broken.forEach(function (img) {
    var box = document.createElement("span");
    box.className = "missing";
    box.textContent = "plot could not be shown: " + (img.getAttribute("data-name") || img.alt);
    img.replaceWith(box);
  });
  var root = document.documentElement, body = document.body;
  var errors = +root.getAttribute("data-js-errors"), blocked = +root.getAttribute("data-blocked");
  body.setAttribute("data-images", String(images.length));
  body.setAttribute("data-images-broken", String(broken.length));
  body.setAttribute("data-report-status",
    broken.length || errors || blocked ? "errors" : "ok");
});
"""
