"""The HTML report in a real headless browser (Debian's chromium, installed by `make test`).

The page records its own verdict: an inline script runs on `load` and sets
`data-report-status="ok"` on <body> only if every <img> decoded (complete and
naturalWidth > 0), no script error happened and the Content-Security-Policy blocked
nothing; `--dump-dom` returns the DOM after that. The second test breaks a plot, injects a
script error and an external image, and checks that each of them is caught.

The screenshot of the good page is kept in test-output/report.png at the repository root
(or $CIRCUITLAB_TEST_OUTPUT/report.png), next to the page itself (report.html).
Without chromium these tests fail and say how to install it; CIRCUITLAB_SKIP_BROWSER=1
skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from circuitlab.core.plotting import save_heatmaps
from circuitlab.core.report import build_report
from circuitlab.core.runs import RunDir

REPO = Path(__file__).resolve().parents[2]
TEST_OUTPUT = Path(os.environ.get("CIRCUITLAB_TEST_OUTPUT", REPO / "test-output"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no network, even if the page asked for it
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str:
    """The chromium executable; a test asks for it before doing any work."""
    if os.environ.get("CIRCUITLAB_SKIP_BROWSER") == "1":
        pytest.skip("CIRCUITLAB_SKIP_BROWSER=1: browser test skipped")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed: run the test setup (`make test` installs Debian's "
            "chromium; or `apt-get install -y --no-install-recommends chromium`), or set "
            "CIRCUITLAB_SKIP_BROWSER=1 to skip the browser tests",
            pytrace=False,
        )
    return path


def open_in_browser(browser: str, page: Path, profile: Path, screenshot: Path | None = None):
    """The DOM after load (parsed) and chromium's log of console messages."""
    command = [browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom"]
    if screenshot is not None:
        command += [f"--screenshot={screenshot}", "--window-size=1200,2000"]
    result = subprocess.run(
        [*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return Dom(result.stdout), console


class Dom(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}  # of <html> and <body>
        self.images: list[dict[str, str | None]] = []
        self.boxes: list[str] = []  # texts of "missing plot" boxes
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._box: list[str] | None = None
        self.feed(page)
        assert "body" in self.attrs, "no <body> in the dumped DOM"

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("html", "body"):
            self.attrs[tag] = attributes
        elif tag == "img":
            self.images.append(attributes)
        elif tag == "span" and "missing" in (attributes.get("class") or ""):
            self._box = []
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "span" and self._box is not None:
            self.boxes.append("".join(self._box))
            self._box = None

    def handle_data(self, data):
        for sink in (self._cell, self._box):
            if sink is not None:
                sink.append(data)

    def table_with_header(self, *header: str) -> list[dict[str, str]]:
        for table in self.tables:
            if tuple(table[0]) == header:
                return [dict(zip(header, row, strict=True)) for row in table[1:]]
        raise AssertionError(f"no table with header {header}: {[t[0] for t in self.tables]}")


def accuracy_plot(path: Path, summary: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.6))
    for variant in ("cot", "direct L3"):
        points = [r for r in summary if r["variant"] == variant and r["task"] == "lis"]
        ax.plot([r["size"] for r in points], [r["answer_accuracy"] for r in points], "-o",
                label=variant)  # fmt: skip
    ax.set_xlabel("problem size")
    ax.legend()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def make_runs(root: Path) -> tuple[Path, Path, dict, dict]:
    """Two run directories in the layout the systems write: results.json, report.md, plots."""
    cot = RunDir.open(root / "cot-quick", {"profile": "quick", "seed": 0})
    summary = [
        {"task": task, "size": size, "variant": variant, "answer_accuracy": acc}
        for task, size, variant, acc in [
            ("arithmetic", 2, "cot", 0.9961), ("arithmetic", 2, "direct L3", 0.8125),
            ("arithmetic", 3, "cot", 0.9874), ("arithmetic", 3, "direct L3", 0.4402),
            ("lis", 8, "cot", 1.0), ("lis", 8, "direct L3", 0.7311),
            ("lis", 16, "cot", 0.9987), ("lis", 16, "direct L3", 0.2034),
        ]
    ]  # fmt: skip
    cot_results = {"profile": "quick", "summary": summary}
    cot.write_results(cot_results)
    accuracy_plot(cot.path / "accuracy_vs_size.png", summary)
    lines = ["# cot sweep, profile `quick`", "", "Final-answer accuracy (greedy decoding).", "",
             "| task | size | cot | direct L3 |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for task, size in [("arithmetic", 2), ("arithmetic", 3), ("lis", 8), ("lis", 16)]:
        acc = {r["variant"]: r["answer_accuracy"] for r in summary
               if (r["task"], r["size"]) == (task, size)}  # fmt: skip
        lines.append(f"| {task} | {size} | {acc['cot']:.3f} | {acc['direct L3']:.3f} |")
    lines += ["", "Official: arithmetic n=4 direct L3 0.729 & CoT >= 0.9946 (<1% gap).", "",
              "![accuracy vs size](accuracy_vs_size.png)", ""]  # fmt: skip
    cot.write_report("\n".join(lines))

    circuits = RunDir.open(root / "circuits-ioi", {"task": "ioi", "model": "SmolLM2-135M"})
    table = [
        {"method": "sae", "auc": 0.9123, "ap": 0.5012, "seconds": 3.2},
        {"method": "gradient", "auc": 0.7741, "ap": 0.3388, "seconds": 1.1},
        {"method": "random", "auc": 0.4987, "ap": 0.0911, "seconds": 0.0},
    ]
    circuits_results = {"table": table}
    circuits.write_results(circuits_results)
    rng = np.random.default_rng(0)
    save_heatmaps(circuits.path / "heatmap.png", [("sae", rng.normal(size=(6, 9)))],
                  xlabel="head", ylabel="layer", colorbar="score", marked=[(1, 2)])  # fmt: skip
    rows = [f"| {r['method']} | {r['auc']:.3f} | {r['ap']:.3f} | {r['seconds']:.1f} |"
            for r in table]  # fmt: skip
    circuits.write_report("\n".join([
        "# Circuit discovery: IOI on SmolLM2-135M", "", "## Scores against the reference", "",
        "| method | ROC AUC | AP | seconds |", "| --- | ---: | ---: | ---: |", *rows, "",
        "## Heads", "", "![head scores](heatmap.png)", "",
    ]))  # fmt: skip
    return cot.path, circuits.path, cot_results, circuits_results


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_loads_shows_every_plot_and_holds_the_results(tmp_path):
    browser = chromium()
    cot, circuits, cot_results, circuits_results = make_runs(tmp_path / "runs")
    report = build_report([cot, circuits], tmp_path / "report.html")
    assert report.warnings == ()
    TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
    screenshot = TEST_OUTPUT / "report.png"
    screenshot.unlink(missing_ok=True)
    shutil.copyfile(report.html, TEST_OUTPUT / "report.html")

    dom, console = open_in_browser(browser, report.html, tmp_path / "profile", screenshot)
    print(f"screenshot: {screenshot}")

    # (a) loads without errors: no script error, nothing blocked, no console message at all
    assert dom.attrs["html"]["data-js-errors"] == "0"
    assert dom.attrs["html"]["data-blocked"] == "0"
    assert dom.attrs["body"]["data-report-status"] == "ok", dom.attrs
    assert console == []
    # (b) every plot is shown: both PNGs embedded and decoded by the browser
    assert dom.attrs["body"]["data-images"] == "2"
    assert dom.attrs["body"]["data-images-broken"] == "0"
    assert sorted(img["data-name"] for img in dom.images) == ["accuracy_vs_size.png",
                                                              "heatmap.png"]  # fmt: skip
    assert all(img["src"].startswith("data:image/png;base64,") for img in dom.images)
    assert dom.boxes == []
    # (c) the tables hold the numbers in results.json
    shown = dom.table_with_header("task", "size", "cot", "direct L3")
    cells = {(row["task"], int(row["size"])): row for row in shown}
    assert len(cells) == 4
    for r in cot_results["summary"]:
        value = float(cells[(r["task"], r["size"])][r["variant"]])
        assert value == pytest.approx(r["answer_accuracy"], abs=5e-4), r
    shown = dom.table_with_header("method", "ROC AUC", "AP", "seconds")
    assert [row["method"] for row in shown] == [r["method"] for r in circuits_results["table"]]
    for row, r in zip(shown, circuits_results["table"], strict=True):
        assert float(row["ROC AUC"]) == pytest.approx(r["auc"], abs=5e-4)
        assert float(row["AP"]) == pytest.approx(r["ap"], abs=5e-4)
        assert float(row["seconds"]) == pytest.approx(r["seconds"], abs=0.05)
    assert json.loads((cot / "results.json").read_text()) == cot_results
    # (d) the screenshot: a full-size PNG with something drawn on it
    assert png_size(screenshot) == (1200, 2000)
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"


def test_the_page_reports_broken_plots_script_errors_and_blocked_loads(tmp_path):
    """The checks above can fail: an undecodable plot, a script error and an external
    image are each caught in the browser."""
    browser = chromium()
    cot, _, _, _ = make_runs(tmp_path / "runs")
    (cot / "accuracy_vs_size.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    report = build_report([cot], tmp_path / "report.html")
    page = report.html.read_text()
    page = page.replace(
        "</main>",
        '<img src="https://example.com/x.png" alt="external"><script>notDefined()</script></main>',
    )
    report.html.write_text(page)

    dom, console = open_in_browser(browser, report.html, tmp_path / "profile")

    assert dom.attrs["body"]["data-report-status"] == "errors"
    assert dom.attrs["body"]["data-images-broken"] == "2"  # the bad PNG and the blocked one
    assert dom.attrs["html"]["data-js-errors"] == "1"
    assert dom.attrs["html"]["data-blocked"] == "1"
    assert dom.attrs["html"]["data-blocked-uri"] == "https://example.com/x.png"
    assert "plot could not be shown: accuracy_vs_size.png" in dom.boxes
    assert any("notDefined" in line for line in console)
