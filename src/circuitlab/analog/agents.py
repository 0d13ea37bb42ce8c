"""The three agents of the distillation framework: question designer, solver, reviewer.

AnalogSeeker's multi-agent framework turns implicit knowledge in textbook prose into
question/answer pairs with detailed reasoning. Each role here is a prompt, the fields of
its JSON reply and a schema for it:
- designer: from a node's text, one self-contained question (every value it needs stated);
- solver: step-by-step reasoning and a final answer, grounded in the node's text;
- reviewer: checks the answer against the source, and that the question stands alone:
  accept, revise (with feedback for the solver) or reject.
The data are closed-book: a student trains on the question alone and never sees the
passage, so a question or reasoning that points at it ("according to the passage") teaches
the student to cite a text it does not have. `source_reference` finds such phrases and
`check` rejects them (cause refers_to_passage).
Replies are parsed leniently (code fences, text around the object, a reply cut off by the
token limit are repaired; LaTeX written unescaped into a string is kept as written; see
`parse_object`) and then validated against the role's schema; what still fails is a
`MalformedOutput` with a short cause that is recorded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from circuitlab.analog.llm.base import ChatRequest, messages

QUESTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["question"],
    "properties": {
        # no "?" required: "Calculate the gain of ..." is a question
        "question": {"type": "string", "minLength": 15, "maxLength": 800}
    },
}
SOLUTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["reasoning", "answer"],
    "properties": {
        "reasoning": {"type": "string", "minLength": 30},
        "answer": {"type": "string", "minLength": 1, "pattern": r"\w"},
    },
}
REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["verdict"],
    "properties": {
        "verdict": {"enum": ["accept", "revise", "reject"]},
        "feedback": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Role:
    name: str
    system: str
    fields: tuple[str, ...]  # the reply's keys, in the order a small model writes them
    schema: dict[str, Any]

    def prefill(self, values: dict[str, Any] | None = None) -> str:
        """The reply so far: the fields already known, then the opening of the next one.

        A backend that continues a prefilled reply (the embedded one) is asked one field at
        a time: the model only ever writes the inside of a JSON string, which a 135M model
        does far more reliably than a whole object.
        """
        values = values or {}
        missing = [f for f in self.fields if f not in values]
        known = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()]
        if missing:
            known.append(f'"{missing[0]}": "')
            return "{" + ", ".join(known)
        return "{" + ", ".join(known) + "}"


DESIGNER = Role(
    "designer",
    "You are a question designer for a course on analog circuit design. Read the textbook "
    "passage and write ONE self-contained exam question that tests its main concept. The "
    "student sees only the question, never the passage: state in the question every value, "
    "condition and circuit detail needed to answer it, and never refer to the passage, the "
    'text or a section (no "according to the passage"). A question may be an instruction '
    '("Calculate the gain of ..."). Reply with only a JSON object: '
    '{"question": "<the question>"}',
    ("question",),
    QUESTION_SCHEMA,
)
SOLVER = Role(
    "solver",
    "You are an expert analog circuit designer. Answer the exam question: reason step by "
    "step, then state the final answer. The textbook passage is background for you alone: "
    "use its facts, but write the reasoning as a self-contained explanation that never "
    "mentions the passage, the text or a section. Reply with only a JSON object: "
    '{"reasoning": "<step-by-step reasoning>", "answer": "<the final answer>"}',
    ("reasoning", "answer"),
    SOLUTION_SCHEMA,
)
REVIEWER = Role(
    "reviewer",
    "You are a strict reviewer of exam material on analog circuits. Check the answer and its "
    "reasoning against the textbook passage, and check that the question stands alone: a "
    "student who never saw the passage must find every value it needs in the question, and "
    "neither question nor answer may refer to a passage or text. Verdict accept if correct, "
    "supported by the passage and standing alone; revise if fixable (say what to fix); "
    "reject if the question or answer is wrong, off topic or cannot stand alone. Reply "
    'with only a JSON object: {"verdict": "accept" or "revise" or "reject", "feedback": '
    '"<one sentence>"}',
    ("verdict", "feedback"),
    REVIEW_SCHEMA,
)
ROLES = {role.name: role for role in (DESIGNER, SOLVER, REVIEWER)}


class MalformedOutput(Exception):
    """A reply that is not a valid object for its role; `cause` is short and countable."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail


def passage(node: dict[str, Any]) -> str:
    title = node["provenance"]["section"][-1]
    return f'Textbook passage (section "{title}"):\n{node["text"]}'


# The kinds of question a node is asked for, rotated across a node's questions and from
# node to node (distill --questions-per-node): one recall question per node taught a
# student one kind of answer. (name, what the designer is told)
QUESTION_TYPES: tuple[tuple[str, str], ...] = (
    ("conceptual", "a conceptual question: why or how something works, or what follows from "
     "a principle"),
    ("calculation", "a calculation with numbers: give every value it needs (component values, "
     "supply, frequency) and ask for a numeric result with units"),
    ("design trade-off", "a design trade-off: choosing between options or parameter values, "
     "and what each choice costs and gains"),
    ("troubleshooting", "a troubleshooting question: a circuit that misbehaves in a stated way; "
     "ask for the likely cause or the fix"),
)  # fmt: skip


def question_type(index: int) -> str:
    """The name of question type `index` (taken modulo the number of types)."""
    return QUESTION_TYPES[index % len(QUESTION_TYPES)][0]


def designer_request(
    node: dict[str, Any], prefill: str = "", kind: str | None = None, **options: Any
) -> ChatRequest:
    """`kind`: one of QUESTION_TYPES' names, or None for a question on the main concept."""
    user = f"{passage(node)}\n\nWrite one self-contained exam question on this material."
    if kind is not None:
        what = dict(QUESTION_TYPES)[kind]
        # the type's description stays apart from the ask: a small model echoes an ask
        # that reads like a question ("Write why or how something works")
        user = (
            f"{passage(node)}\n\nQuestion type: {kind} ({what}).\n"
            "Write one self-contained exam question of this type on this material."
        )
    return ChatRequest(messages(DESIGNER.system, user), prefill=prefill, json=True, **options)


def solver_request(
    node: dict[str, Any],
    question: str,
    feedback: str | None = None,
    prefill: str = "",
    **options: Any,
) -> ChatRequest:
    user = f"{passage(node)}\n\nQuestion: {question}"
    if feedback:
        user += f"\n\nA reviewer asked for a revision of your previous answer: {feedback}"
    user += "\n\nAnswer the question step by step."
    return ChatRequest(messages(SOLVER.system, user), prefill=prefill, json=True, **options)


def reviewer_request(
    node: dict[str, Any],
    question: str,
    reasoning: str,
    answer: str,
    prefill: str = "",
    **options: Any,
) -> ChatRequest:
    user = (
        f"{passage(node)}\n\nQuestion: {question}\nReasoning: {reasoning}\nAnswer: {answer}"
        "\n\nIs the answer correct and supported by the passage, and does the question stand "
        "alone for a student who never sees the passage?"
    )
    return ChatRequest(messages(REVIEWER.system, user), prefill=prefill, json=True, **options)


# What small models write instead of the three verdicts; mapped before schema validation.
VERDICT_SYNONYMS = {
    "yes": "accept", "accepted": "accept", "accepts": "accept", "correct": "accept",
    "approve": "accept", "approved": "accept", "pass": "accept", "true": "accept",
    "no": "reject", "rejected": "reject", "rejects": "reject", "incorrect": "reject",
    "wrong": "reject", "fail": "reject", "false": "reject",
    "revised": "revise", "revision": "revise", "revises": "revise", "fix": "revise",
}  # fmt: skip
_PAIR = re.compile(r'"(\w+)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)
# A backslash JSON reads as an escape (an escaped backslash or quote, a unicode escape, or
# one of b f n r t that does not open a lower-case word), or else a lone backslash (group 1).
_BACKSLASH = re.compile(r'\\(?:[\\"/]|u[0-9a-fA-F]{4}|[bfnrt](?![a-z]))|(\\)')


def _latex_safe(text: str) -> str:
    """Double every backslash that does not open a JSON escape, so LaTeX in a reply
    survives decoding byte for byte.

    Teachers write LaTeX into JSON strings unescaped: `\\omega` is an invalid escape
    (json raises) and `\\frac`, `\\beta`, `\\times`, `\\nu` are valid ones that decode to a
    form feed, backspace, tab and newline. A b/f/n/r/t escape followed by a lower-case
    letter is read as a LaTeX command; a newline before a lower-case word is the price.
    After this every backslash opens a valid escape."""
    return _BACKSLASH.sub(lambda m: "\\\\" if m.group(1) else m.group(0), text)


def _repair(text: str) -> str:
    """Close a JSON object cut off mid-way: an open string, a dangling comma, open braces."""
    in_string = escaped = False
    depth = 0
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
    if escaped:
        text = text[:-1]
    if in_string:
        text += '"'
    text = re.sub(r",\s*$", "", text.rstrip())
    text = re.sub(r'(\{|,)\s*"[^"]*"\s*:?\s*$', r"\1", text)  # a key with no value
    text = re.sub(r",\s*$", "", text)
    return text + "}" * max(depth, 0)


def parse_object(text: str | None) -> tuple[dict[str, Any], bool]:
    """(object, repaired) from a model reply; raises MalformedOutput (empty_reply, no_json,
    bad_json). Accepts the object alone, inside a code fence or surrounded by prose; an
    object cut off by the token limit is closed (repaired=True)."""
    if text is None or not text.strip():
        raise MalformedOutput("empty_reply")
    candidates = [text]
    fenced = _FENCE.search(text)
    if fenced:
        candidates.insert(0, fenced.group(1))
    decoder = json.JSONDecoder(strict=False)
    found_brace = False
    for candidate in candidates:
        start = candidate.find("{")
        if start < 0:
            continue
        found_brace = True
        body = _latex_safe(candidate[start:])
        try:
            value, _ = decoder.raw_decode(body)
            if isinstance(value, dict):
                return value, False
        except json.JSONDecodeError:
            pass
        try:
            value = decoder.decode(_repair(body.strip()))
            if isinstance(value, dict):
                return value, True
        except json.JSONDecodeError:
            continue
    if found_brace:
        # Last resort: the "key": "string" pairs of a broken object ({"verdict": "yes" or
        # "no"}), first occurrence of each key.
        pairs: dict[str, Any] = {}
        for key, value in _PAIR.findall(text):
            pairs.setdefault(key, json.loads(f'"{_latex_safe(value)}"', strict=False))
        if pairs:
            return pairs, True
    cause = "bad_json" if found_brace else "no_json"
    raise MalformedOutput(cause, text[:200])


# Phrases that point at a text the student never sees. The one list of them: the designer
# and solver prompts ask for closed-book text, this catches what a model writes anyway.
# Deliberately narrow: "the source" (of a MOSFET), "the material", "the reading" (of a
# meter) and "the following" are ordinary analog-circuit English.
SOURCE_REFERENCES = (
    r"according to the (?:passage|text|excerpt|section|paragraph|chapter|textbook|author)s?",
    r"(?:the|this|that|above|given|provided|preceding) (?:passage|excerpt|paragraph)s?",
    r"(?:the|this|above|given|provided|preceding) text",
    r"this (?:section|chapter)",
    r"the above",
    r"(?:mentioned|stated|described|discussed|shown|given) (?:above|in the text)",
    r"the author(?:s|'s)?",
)
_SOURCE_REFERENCE = re.compile(r"\b(?:" + "|".join(SOURCE_REFERENCES) + r")\b", re.I)
# the fields of a role's reply that the student trains on
CLOSED_BOOK_FIELDS = {"designer": ("question",), "solver": ("reasoning", "answer")}


def source_reference(text: str) -> str | None:
    """The first phrase of `text` that refers to an unseen passage ("the passage",
    "according to the text", "the above"), or None when `text` stands alone."""
    found = _SOURCE_REFERENCE.search(text)
    return found.group(0) if found else None


def check(role: Role, value: dict[str, Any]) -> dict[str, Any]:
    """Schema-check a parsed reply of `role` (strings stripped, verdict lower-cased), and
    refuse a question, reasoning or answer that refers to the passage (refers_to_passage)."""
    value = {k: v.strip() if isinstance(v, str) else v for k, v in value.items()}
    if role is REVIEWER and isinstance(value.get("verdict"), str):
        verdict = value["verdict"].lower().strip(" .!")
        value["verdict"] = VERDICT_SYNONYMS.get(verdict, verdict)
    try:
        jsonschema.validate(value, role.schema)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "reply"
        raise MalformedOutput(f"schema:{where}", e.message[:200]) from None
    for name in CLOSED_BOOK_FIELDS.get(role.name, ()):
        phrase = source_reference(value[name])
        if phrase is not None:
            raise MalformedOutput(
                "refers_to_passage", f'the {name} says "{phrase}"; the student never sees it'
            )
    return value


def validate(role: Role, text: str | None) -> tuple[dict[str, Any], bool]:
    """Parse and schema-check one whole reply of `role`: (value, repaired)."""
    value, repaired = parse_object(text)
    return check(role, value), repaired
