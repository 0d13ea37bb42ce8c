"""Learning nodes: granular decomposition, provenance, taxonomy tags, coverage, reruns."""

from __future__ import annotations

import json

import pytest

from circuitlab.analog.corpus import Section
from circuitlab.analog.nodes import NodesConfig, classify, decompose, run_nodes
from circuitlab.analog.taxonomy import load_taxonomy, tag_texts
from circuitlab.core.errors import CircuitlabError


def test_shipped_nodes_trace_back_to_their_characters_and_cover_the_taxonomy(shipped_nodes):
    out = shipped_nodes.parent
    nodes = [json.loads(line) for line in shipped_nodes.read_text().splitlines()]
    docs = {
        d["id"]: d["text"]
        for d in map(json.loads, (out / "documents.jsonl").read_text().splitlines())
    }
    assert len(nodes) > 300 and len({n["id"] for n in nodes}) == len(nodes)
    for node in nodes:
        start, end = node["provenance"]["span"]
        assert docs[node["provenance"]["file"]][start:end] == node["text"]
        assert node["tagged_by"] == "tfidf-cosine" and node["tags"]
    summary = json.loads((out / "nodes_summary.json").read_text())
    coverage = summary["coverage"]
    assert set(load_taxonomy().tops) <= set(coverage)
    assert coverage["opamps"]["count"] > 20 and coverage["devices"]["leaves"]["devices.diode"] > 10
    assert sum(summary["node_kinds"].values()) == summary["nodes"] == len(nodes)
    opamp = [n for n in nodes if n["provenance"]["section"][0] == "Operational Amplifiers"]
    assert sum("opamps" in n["branches"] for n in opamp) > len(opamp) / 2


def test_review_items_become_nodes_and_prose_is_grouped():
    prose = " ".join(["The op-amp amplifies the difference between its inputs."] * 4)
    text = "\n\n".join(
        [
            prose,
            "A short aside here.",
            "A follower is called a buffer because it isolates a source from its load well.",
            "- REVIEW:\n- Negative feedback makes the op-amp drive its inputs to equal voltage "
            "so the difference between them is practically zero in every linear circuit.\n"
            "- Too short.",
        ]
    )
    section = Section("s", "f", ("Op-amps",), text, (0, len(text)), (0, 1), "char")
    spans = [text[a:b] for a, b in decompose(section, min_words=10, max_words=60)]
    assert spans[0] == f"{prose}\n\nA short aside here."  # short tail joins
    assert spans[1].startswith("A follower is called a buffer")  # new term, new node
    assert spans[2].startswith("Negative feedback makes") and len(spans) == 3
    assert classify(spans[1]) == "definition" and classify("V = I R holds") == "relationship"


def test_custom_taxonomy_and_bad_taxonomies(tmp_path):
    good = tmp_path / "tax.toml"
    good.write_text(
        '[[branch]]\nid = "filters"\nname = "Filters"\nkeywords = ["low-pass", "cutoff"]\n'
        '[[branch]]\nid = "power"\nname = "Power"\nkeywords = ["rectifier", "ripple"]\n'
    )
    taxonomy = load_taxonomy(good)
    tags = tag_texts(
        ["a low-pass filter with a cutoff", "rectifier ripple", "nothing related"], taxonomy
    )
    assert [t[0] for t in tags] == [["filters"], ["power"], ["untagged"]]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[branch]]\nid = "x"\nname = "X"\ncolour = "red"\n')
    with pytest.raises(CircuitlabError, match="unknown key"):
        load_taxonomy(bad)
    with pytest.raises(CircuitlabError, match="does not exist"):
        load_taxonomy(tmp_path / "missing.toml")


def test_rerun_skips_finished_work_and_refuses_another_config(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Gain\n\n" + "Gain is the ratio of output to input. " * 10)
    out = tmp_path / "run"
    first = run_nodes(corpus, out)
    stamp = (out / "nodes.jsonl").stat().st_mtime_ns
    assert run_nodes(corpus, out) == first
    assert (out / "nodes.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(CircuitlabError, match="different config"):
        run_nodes(corpus, out, NodesConfig(min_words=30, max_words=200))
    with pytest.raises(CircuitlabError, match="twice"):
        NodesConfig(min_words=30, max_words=40)


def test_max_words_is_a_limit_for_any_paragraph(tmp_path):
    """Issue 23's probe: one huge paragraph became one node (and a request of its size).
    Now it comes in parts of whole sentences, and a sentence without end is cut between
    words; every word of the paragraph is in exactly one node, and spans still trace."""
    import subprocess
    import sys

    sentences = " ".join(f"Sentence {i} says the op-amp gain is {i} volts." for i in range(400))
    endless = " ".join(f"word{i}" for i in range(1000))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "big.md").write_text(f"# Gain\n\n{sentences}\n\n# Endless\n\n{endless}\n")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "circuitlab", "analog", "nodes", "--corpus", str(corpus),
         "--out", str(out), "--max-words", "60", "--min-words", "20"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    nodes = [json.loads(line) for line in (out / "nodes.jsonl").read_text().splitlines()]
    (doc,) = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    assert all(len(n["text"].split()) <= 60 for n in nodes)
    for node in nodes:
        start, end = node["provenance"]["span"]
        assert doc["text"][start:end] == node["text"] == node["text"].strip()
    words = [w for n in nodes for w in n["text"].split()]
    assert words == sentences.split() + endless.split()
    gain = [n["text"] for n in nodes if n["text"].startswith("Sentence")]
    assert len(gain) >= 400 * 10 // 60 and all(t.endswith("volts.") for t in gain)


def test_parts_of_a_long_paragraph_stay_inside_it():
    """A paragraph that does not start the section: its parts are cut at its own sentence
    ends and never reach into the next paragraph (review finding: cut points were offset
    by the paragraph's start)."""
    from circuitlab.analog.nodes import _bounded

    text = "X" * 40 + "\n\n" + "S0 w w w. S1 w w w. S2 w w w. S3 w w w." + "\n\nNEXT words here."
    start = text.index("S0")
    end = text.index("\n\nNEXT")
    parts = [text[a:b] for _, a, b in _bounded(text, "prose", start, end, 5)]
    assert parts == ["S0 w w w.", "S1 w w w.", "S2 w w w.", "S3 w w w."]
