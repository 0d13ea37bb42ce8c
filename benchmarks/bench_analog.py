"""Speed of the analog data pipeline: python benchmarks/bench_analog.py [--skip-embedded]

1. ingestion + decomposition: nodes per second on the shipped textbook slice;
2. distillation with the embedded SmolLM2-135M backend: QA records per minute on a few
   nodes (fresh cache, so every call is generated);
3. the HTTP backend against a local OpenAI-compatible server that takes 0.2 s per request:
   requests per second at concurrency 1, 4 and 16, and the most requests seen in flight.
Prints one JSON object; numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "analog" / "fake_openai_server.py"


def bench_nodes(work: Path) -> dict:
    from circuitlab.analog.corpus import SHIPPED
    from circuitlab.analog.nodes import run_nodes

    started = time.perf_counter()
    summary = run_nodes(SHIPPED, work / "nodes")
    seconds = time.perf_counter() - started
    return {
        "documents": summary["documents"],
        "nodes": summary["nodes"],
        "seconds_total": round(seconds, 2),
        "nodes_per_second": round(summary["nodes"] / seconds, 1),
    }


def bench_embedded(work: Path, nodes: int) -> dict:
    from circuitlab.analog.distill import DistillConfig, distill

    config = DistillConfig(max_nodes=nodes, batch_size=nodes)
    summary = distill(work / "nodes" / "nodes.jsonl", work / "embedded", config)
    session = summary["session"]
    return {
        "nodes": nodes,
        "seconds": session["seconds"],
        "records_per_minute": session["records_per_minute"],
        "acceptance_rate": summary["acceptance_rate"],
        "accepted": summary["accepted"],
        "failures_by_cause": summary["failures_by_cause"],
        "llm_calls": session["cache_misses"],
    }


def bench_http(requests: int = 48, delay: float = 0.2) -> dict:
    from circuitlab.analog.llm.base import ChatRequest, messages
    from circuitlab.analog.llm.openai_http import HTTPConfig, OpenAIBackend

    out = {}
    for concurrency in (1, 4, 16):
        server = subprocess.Popen(
            [sys.executable, str(SERVER), "--mode", "slow", "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            port = int(server.stdout.readline())
            client = OpenAIBackend(
                HTTPConfig(f"http://127.0.0.1:{port}/v1", "fake", concurrency=concurrency)
            )
            batch = [
                ChatRequest(messages("You are a question designer.", f"Passage:\n{i}"))
                for i in range(requests)
            ]
            started = time.perf_counter()
            results = client.generate(batch)
            seconds = time.perf_counter() - started
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as response:
                stats = json.loads(response.read())
            assert all(r.error is None for r in results)
            out[concurrency] = {
                "requests_per_second": round(requests / seconds, 1),
                "seconds": round(seconds, 2),
                "max_in_flight": stats["max_in_flight"],
            }
        finally:
            server.terminate()
            server.wait()
    return {"requests": requests, "server_delay_s": delay, "by_concurrency": out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--embedded-nodes", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"nodes": bench_nodes(work), "http": bench_http()}
        if not args.skip_embedded:
            results["embedded"] = bench_embedded(work, args.embedded_nodes)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
