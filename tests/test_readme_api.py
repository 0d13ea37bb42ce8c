"""The README's Python API snippets run as written (each in a fresh folder)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_one_snippet_per_system() -> None:
    found = snippets()
    assert len(found) == 3
    for system, code in zip(("cot", "circuits", "analog"), found, strict=True):
        assert f"from circuitlab.{system}" in code


@pytest.mark.parametrize("index", range(3), ids=["cot", "circuits", "analog"])
def test_snippet_runs_as_written(index: int, tmp_path: Path) -> None:
    code = snippets()[index]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "a snippet prints what it found"
    assert (tmp_path / "runs").is_dir()
