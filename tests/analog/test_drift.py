"""The drift probe's token cap (`--drift-tokens`): at most N tokens, spread over the text."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitlab.analog.drift import load_probe, measure_drift, windows
from circuitlab.analog.evaluate import EvalConfig
from circuitlab.analog.pipeline import PipelineConfig
from circuitlab.core.errors import CircuitlabError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_cap_keeps_whole_windows_spread_over_the_text(tokenizer):
    text = load_probe()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = windows(tokenizer, text, 256)
    assert sum(len(w) for w in whole) == len(ids)
    capped = windows(tokenizer, text, 256, max_tokens=600)
    assert [len(w) for w in capped] == [256, 256]  # 600 // 256 whole windows, no short one
    assert capped[0] == ids[:256]
    start = next(i for i in range(0, len(ids), 256) if ids[i : i + 256] == capped[1])
    assert len(ids) // 3 < start < 2 * len(ids) // 3  # from the middle, not the next one
    small = windows(tokenizer, text, 256, max_tokens=100)
    assert [len(w) for w in small] == [100]  # a cap below the window shrinks the window
    assert windows(tokenizer, text, 256, max_tokens=len(ids)) == whole
    assert windows(tokenizer, text, 256, max_tokens=0) == whole


def test_measure_drift_reads_at_most_the_cap(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    drift = measure_drift(model, tokenizer, load_probe(), window=256, max_tokens=512)
    assert drift["tokens"] == 2 * 255 and drift["max_tokens"] == 512
    with pytest.raises(CircuitlabError, match="drift tokens 1: 0"):
        measure_drift(model, tokenizer, load_probe(), max_tokens=1)


def test_bad_caps_are_refused_by_the_configs():
    for make in (EvalConfig, PipelineConfig):
        for bad in (-5, 1):
            with pytest.raises(CircuitlabError, match=f"drift tokens {bad}: 0 .the whole probe"):
                make(drift_tokens=bad)
    assert EvalConfig().drift_tokens == 0  # analog eval reads the whole probe by default
    assert PipelineConfig().drift_tokens > 0  # the demo's pipeline a part, to stay quick
