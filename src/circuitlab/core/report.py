"""One self-contained report from the report.md files of one or more run directories.

`build_report([dir, ...], out)` writes

    OUT.html   one page, one section per run directory (titled by its report.md's first
               heading, with its own table of contents), every plot embedded as a base64
               data URI, CSS inline: it opens from a mail attachment or a USB stick, and the
               browser loads nothing from anywhere (a Content-Security-Policy says so)
    OUT.md     the same sections as one markdown file, image links rewritten to point from
               OUT's directory to the run directories

The markdown is converted by core.markdown_html (CommonMark plus pipe tables, raw HTML off,
plots embedded, links retargeted or dropped). Images at the top of a run directory that its
report.md does not show are appended, so no plot a run made is left out. Every file read
from a run directory goes through core.paths: one that leads out of it (`../`, absolute, a
symlink) is never read.

A plot that is linked but missing or refused becomes a visible box in the page and a
warning in `Report.warnings`, not an error. A small inline script checks in the browser
that every image decoded and records the result on <body> (`data-report-status="ok"`),
which is how the tests check the page in a real browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_text
from circuitlab.core.markdown_html import (
    IMAGE_TYPES,
    MARKDOWN,
    Rendered,
    escape_text,
    inline_title,
    link_scheme,
    markdown_to_html,
    moved_link,
)
from circuitlab.core.paths import OutsideRoot, files_inside, resolve_inside

CONFIG_LIMIT = 20_000  # characters of config.json shown per section


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
    found = [t for block in MARKDOWN.parse(body) for t in block.children or [] if t.type == "image"]
    for target in (unquote(str(t.attrGet("src") or "")) for t in found):
        if not link_scheme(target):
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
    tokens = MARKDOWN.parse(text)
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
        f"<title>{escape_text(title)}</title>\n<style>{_CSS}</style>\n<script>{_WATCH_SCRIPT}</script>",
        f'</head>\n<body data-report-status="loading">\n<header>\n<h1>{escape_text(title)}</h1>',
        f"<p>Rebuild this report: <code>{escape_text(command)}</code></p>",
    ]
    if warnings:
        parts.append('<div class="warnings"><strong>Built with warnings:</strong><ul>')
        parts += [f"<li>{escape_text(w)}</li>" for w in warnings]
        parts.append("</ul></div>")
    parts.append('<nav class="toc" aria-label="sections"><strong>Sections</strong><ol>')
    parts += [f'<li><a href="#s{n}">{inline_title(s.title, s.run_dir)}</a></li>'
              for n, s in enumerate(sections, start=1)]  # fmt: skip
    parts += ["</ol></nav>", "</header>", "<main>"]
    for number, (section, result) in enumerate(zip(sections, rendered, strict=True), start=1):
        source = f"Run directory: <code>{escape_text(str(section.run_dir))}</code>"
        toc = _section_toc(number, result, section.config is not None)
        parts += [f'<section id="s{number}">',
                  f"<h2>{inline_title(section.title, section.run_dir)}</h2>",
                  f'<p class="source">{source}</p>', toc, result.html]  # fmt: skip
        if section.config is not None:
            config = escape_text(section.config)
            parts.append(f'<details id="s{number}-config"><summary>Configuration (config.json)'
                         f'</summary>\n<pre><code class="language-json">{config}'
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
    contents = MARKDOWN.render("\n".join(lines))
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
        if target.startswith("#") or link_scheme(target):
            return match.group(0)
        return match.group(1) + moved_link(target, base_dir, target_dir)

    lines, tokens = text.split("\n"), MARKDOWN.parse(text)
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
