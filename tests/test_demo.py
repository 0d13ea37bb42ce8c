"""`circuitlab demo` end to end at the smoke preset: every stage runs, reports its progress
through core.progress as it works, and the report opens with the findings.

The screenshot of the report's first screen (headless chromium, as in
tests/core/test_report_browser.py) is kept in test-output/report-first-screen.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from circuitlab import demo
from circuitlab.core.progress import listen

REPO = Path(__file__).resolve().parents[1]
TEST_OUTPUT = Path(os.environ.get("CIRCUITLAB_TEST_OUTPUT", REPO / "test-output"))


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list]]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    events: dict[str, list] = {name: [] for name in demo.STAGES}
    current = [""]

    def recorded(name, stage):
        def run(target, settings):
            current[0] = name
            stage(target, settings)

        return run

    stages = {name: recorded(name, stage) for name, stage in demo.STAGES.items()}
    with pytest.MonkeyPatch.context() as patch, listen(lambda *e: events[current[0]].append(e)):
        patch.setattr(demo, "STAGES", stages)
        demo.run_demo(out, demo.DemoSettings(preset="smoke"))
    return out, events


def test_every_stage_reports_progress_through_core_progress(smoke_demo) -> None:
    out, events = smoke_demo
    for name, seen in events.items():
        assert seen, f"demo stage {name} reported no progress"
        finished = [e for e in seen if e[2] and e[1] == e[2]]
        assert finished, f"demo stage {name}: no bar reached its total"
    # the longest wait for progress is measured per stage and shown in the summary
    summary = (out / "summary" / "report.md").read_text()
    assert "longest wait for progress" in summary
    for name in demo.STAGES:
        assert f"| {name} |" in summary


def test_report_opens_with_the_findings_of_each_system(smoke_demo) -> None:
    out, _ = smoke_demo
    summary = (out / "summary" / "report.md").read_text()
    assert summary.startswith("# Demo findings")
    for system, paper in demo.PAPER_FINDINGS.items():
        assert f"| {system} |" in summary and paper in summary
    combined = (out / "report.md").read_text()
    assert combined.index("Demo findings") < combined.index("## Stages")
    assert "(no headings, plots or configuration)" not in (out / "report.html").read_text()


def test_screenshot_of_the_reports_first_screen(smoke_demo, tmp_path: Path) -> None:
    if os.environ.get("CIRCUITLAB_SKIP_BROWSER") == "1":
        pytest.skip("CIRCUITLAB_SKIP_BROWSER=1: browser test skipped")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: `make test` installs it"
    out, _ = smoke_demo
    TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = TEST_OUTPUT / "report-first-screen.png"
    shot.unlink(missing_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
             f"--screenshot={shot}", "--window-size=1280,800"]  # fmt: skip
    result = subprocess.run([browser, *flags, (out / "report.html").resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
