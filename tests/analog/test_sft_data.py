"""Chat templates that rewrite the reply are refused; what --max-length cuts is counted."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from circuitlab.analog.sft_data import (
    IGNORE,
    answer_text,
    chat_prompt,
    chat_response,
    load_sft_data,
)
from circuitlab.core.errors import CircuitlabError

TURN = "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
HEADER = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
PLAIN = "{% for m in messages %}" + TURN + "{% endfor %}" + HEADER
# a reasoning-model template (DeepSeek-R1's way): the reasoning is dropped from the reply
STRIPS_THINK = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{% set content = m['content'].split('</think>')[-1].lstrip() %}"
    "<|im_start|>assistant\n{{ content }}<|im_end|>\n"
    "{% else %}" + TURN + "{% endif %}{% endfor %}" + HEADER
)
# thinking switched off (Qwen3's way): an empty <think> block before the reply
ADDS_THINK = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}" + TURN + "{% endif %}{% endfor %}" + HEADER
)
# the generation header opens a <think> block that the rendered conversation has not
HEADER_THINKS = PLAIN.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")
REPLY = (
    "<think>\nThe loop gain is large.\n</think>\n<answer>\nThe feedback sets the gain.\n</answer>"
)


@pytest.fixture
def tokenizer(tiny_model_dir):
    """The embedded model's tokenizer, a fresh copy per test, its template swapped by tests."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = PLAIN
    return tok


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_plain_template_keeps_the_reply_as_written(tokenizer):
    assert chat_response(tokenizer, "Why?", REPLY) == REPLY + "<|im_end|>\n"
    # trimming the ends (Llama 3's template does) leaves the response as written
    tokenizer.chat_template = PLAIN.replace("m['content'] }}", "m['content'] | trim }}")
    assert chat_response(tokenizer, "Why?", "\n" + REPLY + "\n\n") == REPLY + "<|im_end|>\n"


def test_a_template_that_strips_the_reasoning_is_refused_naming_it(tokenizer, tmp_path):
    tokenizer.chat_template = STRIPS_THINK
    with pytest.raises(CircuitlabError) as e:
        chat_response(tokenizer, "Why?", REPLY)
    message = str(e.value)
    assert "rewrites the assistant turn" in message
    assert str(tokenizer.name_or_path) in message
    # the excerpts show what was rendered against what was expected
    assert "rendered '<answer>" in message and "response '<think>" in message
    assert "\n" not in message  # one line
    data = write(tmp_path / "qa.jsonl", [{"prompt": "Why?", "response": "<answer>ok</answer>"},
                                          {"prompt": "Why?", "response": REPLY}])  # fmt: skip
    # the first reply has no reasoning to strip: the second line is the one named
    with pytest.raises(CircuitlabError, match=r"qa\.jsonl:2: the chat template"):
        load_sft_data(data, tokenizer, max_length=256)


def test_a_template_that_adds_a_think_prefix_is_kept_and_supervised(tokenizer, tmp_path):
    tokenizer.chat_template = ADDS_THINK
    reply = chat_response(tokenizer, "Why?", "The feedback sets the gain.")
    assert reply == "<think>\n\n</think>\n\nThe feedback sets the gain.<|im_end|>\n"
    data = write(
        tmp_path / "qa.jsonl", [{"question": "Why?", "answer": "The feedback sets the gain."}]
    )
    example = load_sft_data(data, tokenizer, max_length=256).examples[0]
    supervised = tokenizer.decode([t for t in example.labels if t != IGNORE])
    assert supervised == reply  # the added block is trained on, as generation will need it


def test_a_generation_header_that_opens_the_reasoning_keeps_the_rest_as_the_reply(tokenizer):
    tokenizer.chat_template = HEADER_THINKS
    assert chat_prompt(tokenizer, "Why?").endswith("assistant\n<think>\n")
    reply = chat_response(tokenizer, "Why?", REPLY)
    assert reply == REPLY.removeprefix("<think>\n") + "<|im_end|>\n"
    # a reply that does not start as the header does: the boundary cannot be placed
    with pytest.raises(CircuitlabError, match="differently from the start of the whole"):
        chat_response(tokenizer, "Why?", "<answer>\nok\n</answer>")


def reply_length(tokenizer, response):
    return len(tokenizer(chat_response(tokenizer, "Q?", response), add_special_tokens=False)
               ["input_ids"])  # fmt: skip


def test_truncation_counts_cut_examples_lost_tokens_and_what_was_cut(tokenizer, tmp_path):
    head = len(tokenizer(chat_prompt(tokenizer, "Q?"), add_special_tokens=False)["input_ids"])
    short = "<answer>\nyes\n</answer>"
    long = "<think>\n" + " a" * 60 + "\n</think>\n<answer>\nyes\n</answer>"
    # its reply ends '<|im_end|>' '\n': one token over, only the newline after the turn goes
    edge = "<answer>\n" + " b" * 20 + "\n</answer>"
    max_length = head + reply_length(tokenizer, edge) - 1
    lengths = [reply_length(tokenizer, r) for r in (short, long, edge)]
    assert lengths[0] + head <= max_length < lengths[1] + head  # the dataset is as intended
    records = [{"prompt": "Q?", "response": r} for r in (short, long, edge)]
    records.append({"prompt": "Q?", "response": long, "verdict": "reject"})  # not counted
    data = write(tmp_path / "qa.jsonl", records)

    cut = load_sft_data(data, tokenizer, max_length=max_length)
    report = cut.truncation
    assert len(cut.examples) == 3 and cut.filtered == 1
    assert all(len(e.input_ids) <= max_length for e in cut.examples)
    assert (report.examples, report.truncated, cut.truncated) == (3, 2, 2)
    assert report.share == pytest.approx(2 / 3)
    assert report.tokens == sum(lengths) + 3 * head
    assert report.tokens_lost == (lengths[1] + head - max_length) + 1
    assert report.answer_cut == 1  # the long one; the edge one kept </answer> and <|im_end|>
    assert report.eos_cut == 1
    assert report.dropped == 0
    edge_kept = tokenizer.decode(cut.examples[2].input_ids)
    assert answer_text(edge) in edge_kept and edge_kept.endswith("<|im_end|>")
    assert report.as_dict()["share"] == 0.6667
    assert report.line().startswith("2 of 3 examples (66.7%) longer than --max-length")

    drop = load_sft_data(data, tokenizer, max_length=max_length, truncation="drop")
    assert [e.source for e in drop.examples] == [1]
    assert drop.truncation.dropped == 2 and drop.truncation.truncated == 2
    # dropped examples are lost whole
    assert drop.truncation.tokens_lost == lengths[1] + lengths[2] + 2 * head
    assert drop.examples[0].input_ids == cut.examples[0].input_ids


def test_drop_with_nothing_left_is_an_error(tokenizer, tmp_path):
    data = write(tmp_path / "qa.jsonl", [{"prompt": "Q?", "response": " a" * 80}])
    with pytest.raises(CircuitlabError, match="1 dropped as longer than it by --truncation"):
        load_sft_data(data, tokenizer, max_length=40, truncation="drop")
    assert len(load_sft_data(data, tokenizer, max_length=40).examples) == 1  # cut keeps it
    with pytest.raises(CircuitlabError, match="truncation 'keep': use cut or drop"):
        load_sft_data(data, tokenizer, max_length=40, truncation="keep")


def test_a_response_without_answer_tags_is_all_answer(tokenizer, tmp_path):
    assert answer_text("plain words") == "plain words"
    assert answer_text(REPLY) == "<answer>\nThe feedback sets the gain.\n</answer>"
    data = write(tmp_path / "qa.jsonl", [{"prompt": "Q?", "response": " a" * 80}])
    report = load_sft_data(data, tokenizer, max_length=40).truncation
    assert (report.truncated, report.answer_cut, report.eos_cut) == (1, 1, 1)
