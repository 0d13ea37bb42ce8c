"""End to end on a few nodes with the embedded SmolLM2-135M model, offline."""

from __future__ import annotations

import json

from circuitlab.analog.agents import source_reference
from circuitlab.analog.distill import DistillConfig, distill


def test_embedded_model_distils_a_few_nodes_and_a_rerun_costs_nothing(
    embedded_lm, shipped_nodes, tmp_path
):
    nodes = [json.loads(x) for x in shipped_nodes.read_text().splitlines()]
    short = sorted(nodes, key=lambda n: len(n["text"]))[100:103]  # short but not trivial
    nodes_file = tmp_path / "nodes.jsonl"
    nodes_file.write_text("".join(json.dumps(n) + "\n" for n in short))
    config = DistillConfig(
        batch_size=3, question_tokens=32, answer_tokens=48, review_tokens=12, max_revisions=0
    )
    cache = tmp_path / "cache"
    summary = distill(nodes_file, tmp_path / "run", config, lm=embedded_lm, cache_dir=cache)
    assert summary["nodes_processed"] == 3 and summary["complete"]
    qa = [json.loads(x) for x in (tmp_path / "run" / "qa.jsonl").read_text().splitlines()]
    assert summary["qa_records"] == len(qa) >= 1  # the 135M model gets at least one through
    for record in qa:
        assert record["question"] and record["answer"] and record["reasoning"]
        assert source_reference(record["question"] + record["reasoning"]) is None  # closed-book
        assert set(record["models"].values()) == {"SmolLM2-135M-Instruct"}
        assert record["verdict"] in ("accept", "revise", "reject")
    assert summary["session"]["cache_misses"] > 0
    again = distill(nodes_file, tmp_path / "again", config, lm=embedded_lm, cache_dir=cache)
    assert again["session"]["cache_misses"] == 0
    assert again["accepted"] == summary["accepted"]
