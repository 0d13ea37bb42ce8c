"""One self-contained report from the report.md files of one or more run directories.

`build_report([dir, ...], out)` writes

    OUT.html   one page, one section per run directory (titled by its report.md's first
               heading, with its own table of contents), every plot embedded as a base64
               data URI, CSS inline: it opens from a mail attachment or a USB stick, and the
               browser loads nothing from anywhere (a Content-Security-Policy says so)
    OUT.md     the same sections as one markdown file, image links rewritten to point from
               OUT's directory to the run directories

The markdown is CommonMark plus pipe tables, parsed by markdown-it-py with raw HTML off (so
nothing in a report.md can inject markup); its tokens are adjusted before rendering: heading
ids and levels, plots embedded, links retargeted or dropped, HTML comments (editors' notes)
left out. Images at the top of a run directory that its report.md does not show are
appended, so no plot a run made is left out. Every file read from a run directory goes
through core.paths: one that leads out of it (`../`, absolute, a symlink) is never read.

A plot that is linked but missing or refused becomes a visible box in the page and a
warning in `Report.warnings`, not an error. A small inline script checks in the browser
that every image decoded and records the result on <body> (`data-report-status="ok"`),
which is how the tests check the page in a real browser.
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

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_text
from circuitlab.core.paths import OutsideRoot, files_inside, resolve_inside

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}  # fmt: skip
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


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _code(self: object, tokens: Sequence[Token], idx: int, options: object, env: object) -> str:
    """Fenced and indented code, without the trailing newline markdown-it keeps."""
    token = tokens[idx]
    language = token.info.split()[0] if token.info.strip() else ""
    attr = f' class="language-{_attr(language)}"' if language else ""
    return f"<pre><code{attr}>{_text(token.content.removesuffix(chr(10)))}</code></pre>\n"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "xhtmlOut": False}).enable("table")
    md.disable("entity")  # `&amp;` in a report.md is shown as typed, like all other text
    md.validateLink = lambda url: True  # schemes are judged in _href, which keeps the text
    md.block.ruler.before("table", "comment", _comment_block,
                          {"alt": ["paragraph", "reference", "blockquote", "list"]})  # fmt: skip
    rules = {
        "text": lambda self, tokens, idx, options, env: _text(tokens[idx].content),
        "code_inline": lambda self, t, i, o, e: f"<code>{_text(t[i].content)}</code>",
        "fence": _code,
        "code_block": _code,
        "table_open": lambda *_: '<div class="table-wrap"><table>\n',
        "table_close": lambda *_: "</table></div>\n",
    }
    for name, rule in rules.items():
        md.add_render_rule(name, rule)
    return md


_MD = _parser()
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
    tokens = _MD.parse(text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            _heading(token, tokens[i + 1], tokens[i + 2], ctx)
        elif token.type in ("th_open", "td_open") and "style" in token.attrs:
            align = _ALIGN.get(str(token.attrs.pop("style")))
            if align:
                token.attrSet("class", align)
        elif token.type == "inline" and token.children:
            token.children = _inline(token.children, ctx)
    body = _MD.renderer.render(tokens, _MD.options, {}).rstrip("\n")
    return Rendered(body, tuple(ctx.headings), tuple(ctx.plots), tuple(ctx.warnings))


def _plain(children: Sequence[Token] | None) -> str:
    return _MD.renderer.renderInlineAsText(children, _MD.options, {})


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


def _scheme(target: str) -> str:
    try:
        return urlsplit(target).scheme.lower()
    except ValueError:  # e.g. a malformed IPv6 host
        return "invalid"


def _href(target: str, ctx: _Context) -> str | None:
    scheme = _scheme(target)
    if target.startswith("#") or scheme in ("http", "https", "mailto"):
        return target
    if scheme or not target:
        return None  # javascript:, data:, file: and the like are not links in a report
    if ctx.base_dir is None or ctx.link_dir is None:
        return target
    return _moved(target, ctx.base_dir, ctx.link_dir)


def _moved(target: str, base_dir: Path, target_dir: Path) -> str:
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
                f"{_text(message)}</span>")  # fmt: skip

    scheme = _scheme(src)
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


def _inline_title(title: str, base_dir: Path) -> str:
    """A section title's markdown (code spans, emphasis) as HTML."""
    tokens = _MD.parseInline(title)
    for token in tokens:
        token.children = _inline(token.children or [], _Context(base_dir, None))
    return _MD.renderer.render(tokens, _MD.options, {})


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
        sections.append(Section(run_dir, title or run_dir.name, body + extra, config,
                                tuple(warnings + config_warnings)))  # fmt: skip
    return tuple(sections)


def _unlinked_plots(run_dir: Path, body: str) -> tuple[str, list[str]]:
    """Markdown showing the images at the top of `run_dir` that `body` does not show, so
    that no plot a run made is left out of its report; and a warning for each image-named
    symlink that leads out of `run_dir` (never shown)."""
    shown, linked = set(), set()
    found = [t for block in _MD.parse(body) for t in block.children or [] if t.type == "image"]
    for target in (unquote(str(t.attrGet("src") or "")) for t in found):
        if not _scheme(target):
            linked.add(os.path.normpath(target))
            with contextlib.suppress(OutsideRoot):  # refused where it is linked
                shown.add(resolve_inside(run_dir, target))
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
    """The first top-level heading and the text without it."""
    text = text.replace("\r\n", "\n")
    tokens = _MD.parse(text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.level == 0 and token.map:
            title = tokens[i + 1].content.strip()
            if title:
                lines = text.split("\n")
                return title, "\n".join(lines[: token.map[0]] + lines[token.map[1] :])
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
        result = markdown_to_html(section.body, base_dir=section.run_dir, link_dir=out.parent,
                                  heading_shift=1, min_heading_level=3, id_prefix=f"s{number}-")
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
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        # nothing may be loaded from anywhere: images are data URIs, style and script inline
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>\n<style>{_CSS}</style>\n<script>{_WATCH_SCRIPT}</script>",
        f'</head>\n<body data-report-status="loading">\n<header>\n<h1>{_text(title)}</h1>',
        f"<p>Rebuild this report: <code>{_text(command)}</code></p>",
    ]
    if warnings:
        parts.append('<div class="warnings"><strong>Built with warnings:</strong><ul>')
        parts += [f"<li>{_text(w)}</li>" for w in warnings]
        parts.append("</ul></div>")
    parts.append('<nav class="toc" aria-label="sections"><strong>Sections</strong><ol>')
    parts += [f'<li><a href="#s{n}">{_inline_title(s.title, s.run_dir)}</a></li>'
              for n, s in enumerate(sections, start=1)]  # fmt: skip
    parts += ["</ol></nav>", "</header>", "<main>"]
    for number, (section, result) in enumerate(zip(sections, rendered, strict=True), start=1):
        source = f"Run directory: <code>{_text(str(section.run_dir))}</code>"
        toc = _section_toc(number, result, section.config is not None)
        parts += [f'<section id="s{number}">',
                  f"<h2>{_inline_title(section.title, section.run_dir)}</h2>",
                  f'<p class="source">{source}</p>', toc, result.html]  # fmt: skip
        if section.config is not None:
            parts.append(f'<details id="s{number}-config"><summary>Configuration (config.json)'
                         f'</summary>\n<pre><code class="language-json">{_text(section.config)}'
                         "</code></pre></details>")  # fmt: skip
        parts.append("</section>")
    parts += ["</main>", f"<script>{_CHECK_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _section_toc(number: int, result: Rendered, has_config: bool) -> str:
    """The section's headings (nested by level), plots and config; "" if there are none."""
    lines, levels = [], []  # the heading level of each open list
    for h in result.headings:
        while len(levels) > 1 and h.level < levels[-1]:
            levels.pop()
        if not levels or h.level > levels[-1]:
            levels.append(h.level)
        lines.append("  " * (len(levels) - 1) + f"- [{_md_text(h.text)}](#{h.id})")
    links = [f"[{_md_text(p.text)}](#{p.id})" for p in result.plots]
    if links:
        lines += ["", f"Plots: {', '.join(links)}"]
    if has_config:
        lines += ["", f"[Configuration (config.json)](#s{number}-config)"]
    if not lines:
        return ""  # nothing to list: no box
    contents = _MD.render("\n".join(lines))
    return f'<nav class="toc" aria-label="contents"><strong>Contents</strong>\n{contents}</nav>'


def _md_text(text: str) -> str:
    """`text` as markdown that renders to exactly `text`."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def _combined_markdown(
    title: str, command: str, sections: Sequence[Section], markdown_out: Path
) -> str:
    lines = [f"# {title}", "", f"Rebuild this report: `{command}`", ""]
    lines += [f"{n}. {s.title}" for n, s in enumerate(sections, start=1)]
    for section in sections:
        lines += ["", f"## {section.title}", "", f"Run directory: `{section.run_dir}`", ""]
        lines.append(_relocate(section.body, section.run_dir, markdown_out.parent).strip())
        if section.config is not None:
            lines += ["", "Configuration (config.json):", "", "```json", section.config, "```"]
    return "\n".join(lines) + "\n"


_CODE_SPAN = re.compile(r"(`+).*?(?<!`)\1(?!`)")
_LINK_TARGET = re.compile(r"(!?\[(?:[^\[\]\\]|\\.)*\]\(\s*<?)([^\s)>]+)")


def _relocate(text: str, base_dir: Path, target_dir: Path) -> str:
    """Move headings below the section title (as in the HTML) and rewrite relative image
    and link targets from base_dir to target_dir, outside code.

    markdown-it says which lines are code and which are headings; the targets are
    rewritten in the text itself, so the rest of the markdown stays as it was written.
    """

    def retarget(match: re.Match[str]) -> str:
        target = match.group(2)
        if target.startswith("#") or _scheme(target):
            return match.group(0)
        return match.group(1) + _moved(target, base_dir, target_dir)

    lines, tokens = text.split("\n"), _MD.parse(text)
    code: set[int] = set()
    for i, token in enumerate(tokens):
        if token.map is None or token.level != 0:
            continue
        if token.type in ("fence", "code_block"):
            code.update(range(*token.map))
        elif token.type == "heading_open":
            level = min(6, max(3, int(token.tag[1:]) + 1))
            first, stop = token.map
            lines[first] = "#" * level + " " + tokens[i + 1].content
            lines[first + 1 : stop] = [""] * (stop - first - 1)  # a setext underline
    out = []
    for n, line in enumerate(lines):
        if n not in code:
            pieces, last = [], 0
            for span in _CODE_SPAN.finditer(line):
                pieces += [_LINK_TARGET.sub(retarget, line[last : span.start()]), span.group(0)]
                last = span.end()
            line = "".join([*pieces, _LINK_TARGET.sub(retarget, line[last:])])
        out.append(line)
    return "\n".join(out)


_CSS = """
:root { color-scheme: light; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; line-height: 1.5;
  color: #1d1d1f; background: #fff; }
h1 { font-size: 1.9rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { font-size: 1.5rem; margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.2rem; margin-top: 1.8rem; }  h4, h5, h6 { font-size: 1rem; }
section { margin-bottom: 3rem; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .9em;
  background: #f3f3f5; padding: .1em .3em; border-radius: 3px; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: .8rem;
  overflow-x: auto; line-height: 1.35; }  pre code { background: none; padding: 0; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { border: 1px solid #c9ccd1; padding: .3rem .6rem; vertical-align: top; }
th { background: #eef0f3; text-align: left; }  tbody tr:nth-child(even) { background: #fafbfc; }
.r { text-align: right; font-variant-numeric: tabular-nums; }
.c { text-align: center; }  .l { text-align: left; }
img.plot { display: block; max-width: 100%; height: auto; margin: 1rem 0; border: 1px solid #eee; }
.missing { display: block; margin: 1rem 0; padding: 1.5rem; border: 2px dashed #c0392b;
  color: #c0392b; background: #fdf2f2; font-weight: bold; text-align: center; }
.warnings { border-left: 4px solid #e67e22; background: #fef5e7; padding: .5rem 1rem; }
nav.toc { background: #f7f7f9; border: 1px solid #e5e5ea; border-radius: 4px;
  padding: .5rem 1rem; margin: 1rem 0; font-size: .95rem; }
nav.toc ul, nav.toc ol { margin: .2rem 0; }  nav.toc p { margin: .3rem 0; }
.source { color: #555; font-size: .9rem; }
blockquote { border-left: 4px solid #ddd; margin: 1rem 0; padding: 0 1rem; color: #444; }
details { margin: 1rem 0; }  summary { cursor: pointer; color: #333; }
"""

# Runs first: records script errors and anything the Content-Security-Policy blocked.
_WATCH_SCRIPT = """
(function () {
  var root = document.documentElement;
  function bump(name) { root.setAttribute(name, String(+root.getAttribute(name) + 1)); }
  root.setAttribute("data-js-errors", "0");
  root.setAttribute("data-blocked", "0");
  window.addEventListener("error", function (event) {
    if (event.target === window || event instanceof ErrorEvent) bump("data-js-errors");
  }, true);
  document.addEventListener("securitypolicyviolation", function (event) {
    bump("data-blocked");
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
  body.setAttribute("data-report-status", broken.length || errors || blocked ? "errors" : "ok");
});
"""
