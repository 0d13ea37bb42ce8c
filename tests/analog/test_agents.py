"""Agent replies: lenient parsing, schema validation, field-by-field prefills."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitlab.analog.agents import (
    DESIGNER,
    REVIEWER,
    SOLVER,
    MalformedOutput,
    designer_request,
    parse_object,
    reviewer_request,
    source_reference,
    validate,
)


@pytest.mark.parametrize(
    "text, expected, repaired",
    [
        ('{"question": "Why?"}', {"question": "Why?"}, False),
        ('```json\n{"question": "Why?"}\n```', {"question": "Why?"}, False),
        ('Sure! {"question": "Why?"} Hope it helps.', {"question": "Why?"}, False),
        ('{"reasoning": "the gain is hi', {"reasoning": "the gain is hi"}, True),
        ('{"reasoning": "r", "answer": "a",', {"reasoning": "r", "answer": "a"}, True),
        (
            '{"verdict": "yes" or "no", "feedback": "ok"}',
            {"verdict": "yes", "feedback": "ok"},
            True,
        ),
    ],
)
def test_lenient_parser_recovers_objects(text, expected, repaired):
    assert parse_object(text) == (expected, repaired)


@pytest.mark.parametrize(
    "text, cause", [("", "empty_reply"), (None, "empty_reply"), ("no json at all", "no_json")]
)
def test_parser_reports_unrecoverable_replies(text, cause):
    with pytest.raises(MalformedOutput) as info:
        parse_object(text)
    assert info.value.cause == cause


@pytest.mark.parametrize(
    "role, text, cause",
    [
        (DESIGNER, '{"question": "What?"}', "schema:question"),  # too short
        (DESIGNER, '{"query": "What is the gain of a follower?"}', "schema:reply"),
        (SOLVER, '{"reasoning": "Because the gain is high enough to matter."}', "schema:reply"),
        (SOLVER, '{"reasoning": "x", "answer": "y"}', "schema:reasoning"),
        (REVIEWER, '{"verdict": "maybe"}', "schema:verdict"),
        (REVIEWER, '{"verdict": 1}', "schema:verdict"),
    ],
)
def test_schema_rejects_wrong_replies_with_a_countable_cause(role, text, cause):
    with pytest.raises(MalformedOutput) as info:
        validate(role, text)
    assert info.value.cause == cause


def test_valid_replies_and_verdict_synonyms():
    value, _ = validate(DESIGNER, '{"question": "  What does negative feedback do? "}')
    assert value == {"question": "What does negative feedback do?"}
    instruction = "Calculate the gain of an inverting amplifier with R1 = 1 kOhm, R2 = 10 kOhm."
    assert validate(DESIGNER, json.dumps({"question": instruction}))[0]["question"] == instruction
    value, _ = validate(
        SOLVER,
        '{"reasoning": "Step 1: feedback subtracts output. Step 2: gain drops.", '
        '"answer": "It lowers and stabilises the gain."}',
    )
    assert value["answer"].startswith("It lowers")
    assert validate(REVIEWER, '{"verdict": "Yes."}')[0]["verdict"] == "accept"
    assert validate(REVIEWER, '{"verdict": "REJECT", "feedback": "off"}')[0]["verdict"] == "reject"


def test_prefill_asks_for_one_field_at_a_time():
    assert SOLVER.prefill() == '{"reasoning": "'
    partial = SOLVER.prefill({"reasoning": 'a "quoted" Ω'})
    assert partial == '{"reasoning": "a \\"quoted\\" Ω", "answer": "'
    done = SOLVER.prefill({"reasoning": "r", "answer": "a"})
    assert json.loads(done) == {"reasoning": "r", "answer": "a"}
    value, repaired = parse_object(partial + 'forty dB"}')
    assert value == {"reasoning": 'a "quoted" Ω', "answer": "forty dB"} and not repaired


LATEX = r"$\frac{1}{\omega C}$, \beta\times\nu, 10\,k\Omega, a \\ b, \rho\theta\tau\underline{x}"


@pytest.mark.parametrize(
    "reply",
    [
        # Written raw into the string: invalid escapes (\omega) and valid ones (\frac).
        '{"answer": "' + LATEX.replace("\\\\", "\\\\\\\\") + '"}',
        # Escaped as JSON asks.
        json.dumps({"answer": LATEX}),
        # Broken object: the last-resort key/value reader.
        '{"answer": "' + LATEX.replace("\\\\", "\\\\\\\\") + '" or "x", "verdict": "yes"}',
    ],
)
def test_latex_survives_byte_for_byte(reply):
    value, _ = parse_object(reply)
    assert value["answer"] == LATEX


def test_json_escapes_that_open_no_word_are_still_read():
    value, _ = parse_object(r'{"answer": "line one\nLine two\t5 mA \"quoted\" \u00b5A"}')
    assert value["answer"] == 'line one\nLine two\t5 mA "quoted" \u00b5A'


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}":,\\abfnrtuo0 ', max_size=40))
def test_any_reply_parses_or_is_a_recorded_failure(text):
    """Only MalformedOutput may escape: anything else crashes the run and every resume."""
    with contextlib.suppress(MalformedOutput):
        parse_object(text)


@pytest.mark.parametrize(
    "role, reply, phrase",
    [
        (DESIGNER, {"question": "According to the passage, what limits the slew rate?"},
         "According to the passage"),
        (DESIGNER, {"question": "What does the text say about Miller compensation?"},
         "the text"),
        (DESIGNER, {"question": "Using the values given above, find the gain."}, "given above"),
        (DESIGNER, {"question": "What is the main point of this section on mirrors?"},
         "this section"),
        (SOLVER, {"reasoning": "The passage states that feedback lowers gain.", "answer": "1"},
         "The passage"),
        (SOLVER, {"reasoning": "Feedback lowers the gain by 1 + A beta.",
                  "answer": "As in the above, 1/beta."}, "the above"),
    ],
)  # fmt: skip
def test_replies_that_point_at_the_unseen_passage_are_refused(role, reply, phrase):
    """Closed-book data: the student trains on the question alone."""
    with pytest.raises(MalformedOutput) as info:
        validate(role, json.dumps(reply))
    assert info.value.cause == "refers_to_passage" and f'"{phrase}"' in info.value.detail


def test_ordinary_circuit_english_is_not_a_source_reference():
    for text in (
        "The source follower has a gain just below one.",
        "Find the reading of the voltmeter across the following resistor.",
        "A section of transmission line is matched at both ends.",
        "Choose the material of the substrate for low loss.",
    ):
        assert source_reference(text) is None, text
    # the reviewer's feedback is not training data: it may mention the passage
    value, _ = validate(REVIEWER, '{"verdict": "accept", "feedback": "as the passage says"}')
    assert value["verdict"] == "accept"


def test_prompts_ask_for_questions_that_stand_alone():
    node = {"text": "An op-amp with feedback has gain 1/beta.", "provenance": {"section": ["Ch"]}}
    designer = designer_request(node).messages[0][1]
    assert "self-contained" in designer and "every value" in designer and "?" not in designer
    reviewer = reviewer_request(node, "q", "r", "a").messages
    assert "stands alone" in reviewer[0][1] and "stand alone" in reviewer[1][1]
