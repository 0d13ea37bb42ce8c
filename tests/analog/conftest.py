"""Fixtures of the analog tests: real local HTTP servers, small corpora, shipped nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SERVER = Path(__file__).with_name("fake_openai_server.py")


class Server:
    def __init__(self, mode: str, delay: float = 0.2) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--mode", mode, "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[Callable[..., Server]]:
    """Start fake OpenAI servers in given modes (each a real subprocess), stopped after."""
    started: list[Server] = []

    def start(mode: str = "ok", delay: float = 0.2) -> Server:
        started.append(Server(mode, delay))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def shipped_nodes(tmp_path_factory) -> Path:
    """nodes.jsonl of the shipped textbook slice (built once per session)."""
    from circuitlab.analog.corpus import SHIPPED
    from circuitlab.analog.nodes import run_nodes

    out = tmp_path_factory.mktemp("shipped-nodes")
    run_nodes(SHIPPED, out)
    return out / "nodes.jsonl"
