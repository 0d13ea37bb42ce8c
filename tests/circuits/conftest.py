"""Fixtures for the circuits tests: the embedded tokenizer and tiny random-init models."""

from __future__ import annotations

from typing import Any

import pytest
from tiny import ARCHS, tiny_lm

from circuitlab.core.lm import LoadedLM


@pytest.fixture(scope="session")
def tokenizer(embedded_lm: LoadedLM) -> Any:
    return embedded_lm.tokenizer


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request: pytest.FixtureRequest, tokenizer: Any) -> LoadedLM:
    """A random-init tiny GPT-2, Pythia or Llama (6 query heads on 2 key/value heads)."""
    return tiny_lm(request.param, tokenizer)


@pytest.fixture(scope="session", autouse=True)
def _every_circuits_test_on_one_thread(one_thread: None) -> None:
    """Every circuits test runs tiny models: see `one_thread` in tests/conftest.py."""
