"""The README's Guarantees section names the test of each guarantee: every name must be a
real test, or the section promises something nothing checks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_guarantee_names_an_existing_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`([\w/]+\.py)(?:::(\w+))?`", section)
    assert len(named) >= 8
    for file, test in named:
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        assert test == "" or f"def {test}(" in source, f"{file}::{test} does not exist"
