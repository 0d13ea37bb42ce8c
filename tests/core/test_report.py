"""The markdown converter and the report builder (core/report.py), without a browser."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.report import build_report, load_sections, markdown_to_html
from circuitlab.core.runs import RunDir


def tiny_png(width: int = 2, height: int = 1) -> bytes:
    """A valid RGB PNG, written by hand (no matplotlib needed for the unit tests)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))  # fmt: skip


class Tables(HTMLParser):
    """Every <table> as rows of cell texts (header row first)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_of(text: str, **kwargs) -> str:
    return markdown_to_html(text, **kwargs).html


# ------------------------------------------------------------------------- converter


def test_headings_get_levels_ids_and_shift():
    rendered = markdown_to_html("# Top\n\n## Two words!\n\n### Two words\n\n## Two words!\n")
    assert '<h1 id="top">Top</h1>' in rendered.html
    assert '<h2 id="two-words">Two words!</h2>' in rendered.html
    assert '<h2 id="two-words-3">Two words!</h2>' in rendered.html  # ids stay unique
    assert [(h.level, h.text) for h in rendered.headings][:2] == [(1, "Top"), (2, "Two words!")]
    shifted = markdown_to_html("# a\n## b\n###### c", heading_shift=1, min_heading_level=3,
                               id_prefix="s1-")  # fmt: skip
    assert [(h.level, h.id) for h in shifted.headings] == [(3, "s1-a"), (3, "s1-b"), (6, "s1-c")]
    assert "<p>#nospace</p>" in html_of("#nospace")


def test_tables_with_alignment_inline_code_escaped_pipes_and_ragged_rows():
    text = (
        "| task | acc | note |\n"
        "| --- | ---: | :---: |\n"
        "| arithmetic | 0.990 | `a \\| b` |\n"
        "| lis | 1.000 |\n"
        "| ed | 0.5 | x | extra |\n"
        "\n"
        "after"
    )
    page = html_of(text)
    [table] = Tables(page).tables
    assert table == [
        ["task", "acc", "note"],
        ["arithmetic", "0.990", "a | b"],
        ["lis", "1.000", ""],
        ["ed", "0.5", "x"],
    ]
    assert '<th class="r">acc</th>' in page and '<td class="c"><code>a | b</code></td>' in page
    assert page.rstrip().endswith("<p>after</p>")
    # a pipe in a paragraph without a delimiter row is just text
    assert html_of("a | b\nc | d") == "<p>a | b\nc | d</p>"


def test_fenced_code_is_escaped_and_not_interpreted():
    page = html_of("```python\nx = a < b & c  # **not bold**\n\n| a | b |\n```\nafter *it*")
    assert page.startswith(
        '<pre><code class="language-python">x = a &lt; b &amp; c  # **not bold**'
    )
    assert "| a | b |</code></pre>" in page and "<table>" not in page
    assert "<p>after <em>it</em></p>" in page
    assert html_of("~~~~\n```\n~~~~") == "<pre><code>```</code></pre>"


def test_lists_nested_ordered_and_tight():
    page = html_of("- one\n- two *em*\n  - inner `x`\n  - inner 2\n- three\n\n3. c\n4. d\n")
    assert page == (
        "<ul>\n<li>one</li>\n<li>two <em>em</em>\n<ul>\n<li>inner <code>x</code></li>\n"
        "<li>inner 2</li>\n</ul>\n</li>\n<li>three</li>\n</ul>\n"
        '<ol start="3">\n<li>c</li>\n<li>d</li>\n</ol>'
    )
    loose = html_of("1. a\n\n   more of a\n2. b")
    assert "<li>\n<p>a</p>\n<p>more of a</p>\n</li>" in loose
    assert html_of("text\n- item") == "<p>text</p>\n<ul>\n<li>item</li>\n</ul>"


def test_images_are_embedded_as_data_uris(tmp_path):
    png = tiny_png()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "acc vs size.png").write_bytes(png)
    rendered = markdown_to_html(
        '![accuracy <vs> size](plots/acc%20vs%20size.png "Figure 3")', base_dir=tmp_path
    )
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', rendered.html)
    assert match and base64.b64decode(match.group(1)) == png
    assert 'alt="accuracy &lt;vs&gt; size"' in rendered.html and 'title="Figure 3"' in rendered.html
    assert rendered.warnings == () and [p.text for p in rendered.plots] == ["accuracy <vs> size"]


def test_missing_external_and_unsupported_images_become_boxes_with_warnings(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    rendered = markdown_to_html(
        "![a](gone.png)\n\n![b](https://example.com/x.png)\n\n![c](notes.txt)", base_dir=tmp_path
    )
    assert "missing plot: gone.png" in rendered.html
    assert "external image not embedded: https://example.com/x.png" in rendered.html
    assert "unsupported image type: notes.txt" in rendered.html
    assert "<img" not in rendered.html and 'src="https' not in rendered.html
    assert len(rendered.warnings) == 3 and "missing plot: gone.png" in rendered.warnings[0]


def test_text_is_escaped_everywhere():
    text = (
        "# a <b> & c\n\n"
        "x < y && y > z <script>alert(1)</script> &amp;\n\n"
        "| <i> | & |\n| --- | --- |\n| <td>1</td> | a&b |\n\n"
        "- <li>\n\n"
        '[x" onclick="y](https://e.org/?a=1&b="2")\n\n'
        "`<code>` \\<not a tag\\>\n\n"
        "> <quote> &"
    )
    page = html_of(text)
    for raw in ("<b>", "<script>", "<i>", "<td>1", "<li><li>", "<code><code>", "<quote>",
                "&&", "& c", 'b="2"'):  # fmt: skip
        assert raw not in page, raw
    assert '<h1 id="a-b-c">a &lt;b&gt; &amp; c</h1>' in page
    assert "x &lt; y &amp;&amp; y &gt; z &lt;script&gt;alert(1)&lt;/script&gt; &amp;amp;" in page
    assert "<th>&lt;i&gt;</th>" in page and "<td>a&amp;b</td>" in page
    assert '<a href="https://e.org/?a=1&amp;b=%222%22">x" onclick="y</a>' in page  # quotes encoded
    assert "<code>&lt;code&gt;</code> &lt;not a tag&gt;" in page
    assert "<blockquote>\n<p>&lt;quote&gt; &amp;</p>\n</blockquote>" in page


def test_inline_emphasis_links_and_comments(tmp_path):
    page = html_of("**bold** *em* _em_ f1_at_k 2 * 3 * 4 a*b", base_dir=tmp_path)
    assert page == "<p><strong>bold</strong> <em>em</em> <em>em</em> f1_at_k 2 * 3 * 4 a*b</p>"
    assert html_of("[x](javascript:alert(1))") == "<p>x</p>"
    link = html_of("[csv](points/results.csv#top)", base_dir=tmp_path / "run", link_dir=tmp_path)
    assert '<a href="run/points/results.csv#top">csv</a>' in link
    assert html_of("<!-- QUICK_TABLE -->\ntext\n<!--\nmulti\n-->") == "<p>text</p>"
    assert html_of("---") == "<hr>"


_OUR_TAGS = re.compile(
    r"</?(?:p|h[1-6]|pre|code|em|strong|a|img|span|ul|ol|li|blockquote|hr|br|div|table|thead"
    r"|tbody|tr|th|td)(?:\s[^<>]*)?>"
)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab <>&\"'`*_|#-!\\[]()~:.1\n", max_size=80))
def test_any_input_converts_and_only_our_tags_reach_the_page(text):
    page = html_of(text)
    rest = _OUR_TAGS.sub("", page)
    assert "<" not in rest and ">" not in rest, (text, page)


# ---------------------------------------------------------------------------- report


def make_run(path: Path, report: str, images: dict[str, bytes], config=None) -> Path:
    run = RunDir.open(path, config if config is not None else {"profile": "quick"})
    for name, data in images.items():
        (path / name).write_bytes(data)
    run.write_report(report)
    return path


def test_build_report_one_section_per_run_dir(tmp_path):
    cot = make_run(
        tmp_path / "runs" / "cot",
        "intro before the title\n\n# cot sweep, profile `quick`\n\n## Results\n\n"
        "| task | cot |\n| --- | ---: |\n| lis | 0.987 |\n\n![accuracy vs size](acc.png)\n",
        {"acc.png": tiny_png(), "loss curve.png": tiny_png(1, 1)},
    )
    circuits = make_run(
        tmp_path / "runs" / "circuits",
        "# Circuit discovery: IOI\n\n### ROC\n\n![roc](roc.png)\n\n![heads](heatmap.png)\n",
        {"roc.png": tiny_png(3, 2)},
        config={"task": "ioi", "note": "<b>&"},
    )
    report = build_report([cot, circuits], tmp_path / "out" / "report.html")
    page = report.html.read_text()

    assert [s.title for s in report.sections] == ["cot sweep, profile `quick`",
                                                  "Circuit discovery: IOI"]  # fmt: skip
    assert "<h2>cot sweep, profile <code>quick</code></h2>" in page
    assert "<h2>Circuit discovery: IOI</h2>" in page
    assert '<h3 id="s1-results">Results</h3>' in page and '<h4 id="s2-roc">ROC</h4>' in page
    # tables of contents: the sections, then each section's headings, plots and config
    assert '<li><a href="#s1">cot sweep, profile <code>quick</code></a></li>' in page
    assert '<a href="#s1-results">Results</a>' in page and '<a href="#s2-roc">ROC</a>' in page
    assert '<a href="#s1-plot-1">accuracy vs size</a>' in page
    assert '<a href="#s2-config">Configuration (config.json)</a>' in page
    assert '"note": "&lt;b&gt;&amp;"' in page
    assert "intro before the title" in page
    assert Tables(page).tables[0] == [["task", "cot"], ["lis", "0.987"]]
    assert page.count('src="data:image/png;base64,') == 3
    # a plot in the run directory that report.md does not show is appended, not left out
    assert '<h3 id="s1-other-plots-in-this-run-directory">' in page
    assert 'alt="loss curve"' in page and '<a href="#s1-plot-2">loss curve</a>' in page
    # the missing heatmap: a box in the page, a warning, no crash
    assert "missing plot: heatmap.png" in page
    assert len(report.warnings) == 1 and "missing plot: heatmap.png" in report.warnings[0]
    assert "Built with warnings" in page
    # nothing is loaded from anywhere: every src is a data URI, the CSP forbids the rest
    assert re.findall(r'\ssrc="(?!data:image/)', page) == []
    assert re.findall(r'\shref="(?!#)', page) == []
    assert "default-src 'none'; img-src data:" in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert f"circuitlab report {cot} {circuits} --out {tmp_path / 'out' / 'report.html'}" in page

    combined = report.markdown.read_text()
    assert report.markdown == tmp_path / "out" / "report.md"
    assert combined.startswith("# circuitlab report\n")
    assert "## cot sweep, profile `quick`" in combined and "### Results" in combined
    assert "#### ROC" in combined and "![roc](../runs/circuits/roc.png)" in combined
    assert "![accuracy vs size](../runs/cot/acc.png)" in combined
    assert "![loss curve](../runs/cot/loss%20curve.png)" in combined
    assert '"task": "ioi"' in combined
    # rebuilding gives the same files
    again = build_report([cot, circuits], tmp_path / "out" / "report.html")
    assert again.html.read_text() == page and again.markdown.read_text() == combined


def test_default_output_never_overwrites_an_input(tmp_path):
    run = make_run(tmp_path / "r", "# Title\n\ntext\n", {})
    before = (run / "report.md").read_text()
    report = build_report([run])
    assert report.html == run / "report.html"
    assert report.markdown == run / "report.combined.md"
    assert (run / "report.md").read_text() == before
    with pytest.raises(CircuitlabError, match="input report"):
        build_report([run], run / "report.md")
    (tmp_path / "site").mkdir()
    assert build_report([run], tmp_path / "site").html == tmp_path / "site" / "report.html"


def test_a_report_without_a_heading_is_titled_by_its_directory(tmp_path):
    run = make_run(tmp_path / "analog-e2e", "just text\n", {})
    assert [s.title for s in load_sections([run])] == ["analog-e2e"]


def test_bad_run_directories_are_clear_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CircuitlabError, match="no such run directory"):
        load_sections([tmp_path / "nope"])
    with pytest.raises(CircuitlabError, match="is not a directory"):
        load_sections([tmp_path / "file"])
    with pytest.raises(CircuitlabError, match=r"has no report\.md"):
        load_sections([tmp_path / "empty"])
    with pytest.raises(CircuitlabError, match="at least one"):
        load_sections([])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "report.md").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CircuitlabError, match="cannot read"):
        load_sections([tmp_path / "bin"])
    assert not list(tmp_path.glob("**/report.html"))


# ----------------------------------------------------------------------- path policy

SECRET = tiny_png(5, 5)


def leaky_run(tmp_path: Path, link: str) -> Path:
    """A run directory whose report.md links `link`, next to x.png (a plot outside it)."""
    (tmp_path / "x.png").write_bytes(SECRET)
    run = make_run(tmp_path / "run", f"# Leak\n\n![leak]({link})\n\n![fine](ok.png)\n",
                   {"ok.png": tiny_png()})  # fmt: skip
    if link == "out.png":
        (run / "out.png").symlink_to(tmp_path / "x.png")
    return run


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        ("../x.png", "'..' leads out of"),
        ("{tmp}/x.png", "an absolute path"),
        ("out.png", "a symlink leads out of"),
    ],
)
def test_a_linked_plot_outside_the_run_directory_is_a_box_not_embedded(tmp_path, link, reason):
    link = link.format(tmp=tmp_path)
    report = build_report([leaky_run(tmp_path, link)], tmp_path / "out" / "report.html")
    page = report.html.read_text()
    assert base64.b64encode(SECRET).decode() not in page
    assert page.count('src="data:image/') == 1  # ok.png
    assert f"not embedded: {link}" in page and page.count('class="missing"') == 1
    [warning] = report.warnings  # out.png: linked, and a symlink out, is reported once
    assert link in warning and reason in warning


def test_unlinked_image_named_files_are_appended_only_from_inside(tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    run = make_run(tmp_path / "run", "# Plots\n\ntext\n", {})
    (run / "plots").mkdir()
    (run / "plots" / "extra.png").write_bytes(tiny_png(1, 1))
    (run / "also.png").symlink_to(run / "plots" / "extra.png")  # stays inside: shown
    (run / "linked.png").symlink_to(tmp_path / "passwd")
    report = build_report([run], tmp_path / "report.html")
    page = report.html.read_text()
    assert "cm9vdDp4" not in page and "root:x" not in page  # base64 of "root:x", and as text
    assert page.count('src="data:image/png;base64,') == 1 and 'alt="extra"' in page
    assert 'alt="linked"' not in page and 'class="missing"' not in page
    [warning] = report.warnings
    assert "linked.png not embedded: a symlink leads out of" in warning


def test_a_config_json_that_links_out_is_not_shown(tmp_path):
    (tmp_path / "secret.json").write_text('{"token": "hunter2"}')
    run = make_run(tmp_path / "run", "# Config\n", {})
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(tmp_path / "secret.json")
    report = build_report([run], tmp_path / "report.html")
    assert "hunter2" not in report.html.read_text() + report.markdown.read_text()
    [warning] = report.warnings
    assert "config.json not embedded: a symlink leads out of" in warning


def test_a_report_md_that_links_out_of_its_run_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere.md").write_text("# borrowed\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.md").symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(CircuitlabError, match="a symlink leads out of"):
        load_sections([tmp_path / "run"])


def test_a_section_with_nothing_to_list_has_no_contents_box(tmp_path):
    bare = make_run(tmp_path / "bare", "# Bare\n\njust text\n", {})
    (bare / "config.json").unlink()
    full = make_run(tmp_path / "full", "# Full\n\n## Part\n\ntext\n", {})
    page = build_report([bare, full], tmp_path / "report.html").html.read_text()
    assert "no headings, plots or configuration" not in page
    bare_part, full_part = page.split('<section id="s2">')
    assert 'aria-label="contents"' not in bare_part.split('<section id="s1">')[1]
    assert 'aria-label="contents"' in full_part and '<a href="#s2-part">Part</a>' in full_part


def test_markdown_it_constructs_the_systems_use(tmp_path):
    """Comments anywhere a block starts, setext headings, raw HTML blocks, autolinks."""
    page = html_of("- a\n  <!-- note -->\n- b\n\n> q\n> <!-- x -->\n\nTitle\n=====\n\n"
                   "<div onclick=x>\n\n<https://e.org> <javascript:alert(1)>")  # fmt: skip
    assert "note" not in page and "x --" not in page
    assert "<li>a</li>" in page and "<blockquote>\n<p>q</p>\n</blockquote>" in page
    assert '<h1 id="title">Title</h1>' in page
    assert "<p>&lt;div onclick=x&gt;</p>" in page
    assert '<a href="https://e.org">https://e.org</a> javascript:alert(1)' in page
    run = make_run(tmp_path / "run", "# T\n\nSub\n---\n\n```\n![x](in-code.png)\n```\n\n"
                   "`![y](span.png)` ![z](z.png)\n", {"z.png": tiny_png()})  # fmt: skip
    combined = build_report([run], tmp_path / "out" / "r.html").markdown.read_text()
    assert "### Sub\n" in combined and "\n---\n" not in combined
    assert "![x](in-code.png)" in combined and "`![y](span.png)`" in combined
    assert "![z](../run/z.png)" in combined


def test_section_contents_nest_by_heading_level(tmp_path):
    run = make_run(tmp_path / "run", "# T\n\n## A\n\n### A.1\n\n##### A.1.1\n\n## B *b*\n\n"
                   "![p <1>](p.png)\n", {"p.png": tiny_png()})  # fmt: skip
    (run / "config.json").unlink()
    page = build_report([run], tmp_path / "report.html").html.read_text()
    toc = page.split('aria-label="contents">')[1].split("</nav>")[0]
    assert toc == (
        "<strong>Contents</strong>\n<ul>\n"
        '<li><a href="#s1-a">A</a>\n<ul>\n<li><a href="#s1-a-1">A.1</a>\n<ul>\n'
        '<li><a href="#s1-a-1-1">A.1.1</a></li>\n</ul>\n</li>\n</ul>\n</li>\n'
        '<li><a href="#s1-b-b">B b</a></li>\n</ul>\n'
        '<p>Plots: <a href="#s1-plot-1">p &lt;1&gt;</a></p>\n'
    )


def test_the_cli_report_never_embeds_a_file_from_outside(tmp_path):
    """Issue 23's probe as it was run: `circuitlab report` on a run directory holding a
    symlink named linked.png to a file outside it."""
    import subprocess
    import sys

    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    run = make_run(tmp_path / "run", "# Plots\n\n![a](../passwd)\n", {})
    (run / "linked.png").symlink_to(tmp_path / "passwd")
    command = [sys.executable, "-m", "circuitlab", "report", str(run),
               "--out", str(tmp_path / "report.html")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "cm9vdDp4" not in page and "root:x" not in page
    assert "not embedded" in result.stderr and "linked.png" in result.stderr
