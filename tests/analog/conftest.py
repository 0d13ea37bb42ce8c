"""Fixtures of the analog tests: real local HTTP servers, small corpora, shipped nodes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

SERVER = Path(__file__).with_name("fake_openai_server.py")


class Server:
    def __init__(self, mode: str, delay: float = 0.2, replies: Path | None = None) -> None:
        canned = ["--replies", str(replies)] if replies is not None else []
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--mode", mode, "--delay", str(delay), *canned],
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

    def start(mode: str = "ok", delay: float = 0.2, replies: Path | None = None) -> Server:
        started.append(Server(mode, delay, replies))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def fake_replies() -> Any:
    """The fake server's module, for the texts it sends (LATEX_RAW, THINKING...), so a test
    compares what was written with what the server said without restating it."""
    spec = importlib.util.spec_from_file_location("fake_openai_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shipped_nodes(tmp_path_factory) -> Path:
    """nodes.jsonl of the shipped textbook slice (built once per session)."""
    from circuitlab.analog.corpus import SHIPPED
    from circuitlab.analog.nodes import run_nodes

    out = tmp_path_factory.mktemp("shipped-nodes")
    run_nodes(SHIPPED, out)
    return out / "nodes.jsonl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-init 2-layer Llama with the embedded model's tokenizer (and chat template),
    saved as a model directory: fast enough to train for real in a test."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from circuitlab.core.lm import _gguf_cache, embedded_gguf_path

    tokenizer = AutoTokenizer.from_pretrained(_gguf_cache(embedded_gguf_path()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory) -> Path:
    """Twelve QA records in the shapes distill.py writes (prompt/response, with verdicts)."""
    records = []
    for i in range(12):
        records.append(
            {
                "prompt": f"Why does negative feedback stabilise amplifier {i}?",
                "response": f"<think>\nThe loop gain {i} is large, so the gain is 1/beta.\n"
                "</think>\n<answer>\nThe feedback network sets the gain.\n</answer>",
                "verdict": "accept" if i % 4 else "reject",
            }
        )
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
