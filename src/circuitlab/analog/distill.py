"""Multi-agent distillation: knowledge nodes -> question / reasoning / answer records.

For each node the designer writes `questions_per_node` questions of rotating types, the
solver answers each with step-by-step reasoning, and the reviewer accepts, asks for a
revision (the solver answers again with the feedback, up to `max_revisions` times) or
rejects. Questions go through in batches, stage by stage, so the embedded model generates a
batch at once and an HTTP server sees `concurrency` requests in flight. A reply cut off by
its token limit, or one that cites the passage the student never sees, is a failure.

Outputs in the run directory:
    qa.jsonl        one record per node question that produced a reviewed QA pair
    failures.jsonl  one record per node question that did not (stage, cause, the raw reply)
    results.json    acceptance rate, failures by cause, coverage per taxonomy branch
    llm-cache/      every successful LLM response, by content hash
A node question's single line in qa.jsonl or failures.jsonl is its done marker: a killed
run leaves at most a cut-off last line, which the rerun drops before it continues, so no
record is duplicated or lost, and the cache makes redoing the interrupted batch free.

Over 500 lines: the three agents' stages, their revision loop and the done markers share one
batch state (`Distiller`), which a split would pass between modules.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.analog import agents
from circuitlab.analog.agents import MalformedOutput, Role
from circuitlab.analog.corpus.dedup import Deduplicator
from circuitlab.analog.llm.base import Backend, ChatRequest, ChatResult
from circuitlab.analog.llm.cache import CachedBackend
from circuitlab.analog.nodes import read_nodes
from circuitlab.analog.taxonomy import UNTAGGED, top_branch
from circuitlab.core.config import config_to_dict, option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import append_jsonl, atomic_open, atomic_write_text, read_jsonl
from circuitlab.core.runs import RunDir
from circuitlab.core.secrets import redact

BACKENDS = ("embedded", "openai")


@dataclass(frozen=True)
class DistillConfig:
    """What generates and how much.

    backend: embedded (model: None for SmolLM2-135M-Instruct, or a .gguf / model dir) or
    openai (any OpenAI-compatible server: base_url, model, and the *name* of the environment
    variable holding the key; the key itself is never stored). The token limits suit the
    embedded 135M model; give a server's large model room (answer_tokens 1024 or more).
    A reply that fails its schema is retried (max_attempts in all) with sampling at
    retry_temperature and a new seed. timeout_s is for one whole reply: a reasoning teacher
    thinks for minutes before it answers.
    """

    backend: str = option("embedded", "embedded or openai.")
    model: str | None = option(
        None,
        "Served model name (openai), or a .gguf / model dir for the embedded backend "
        "(env CIRCUITLAB_LLM_MODEL) \\[default: the embedded SmolLM2-135M-Instruct].",
        envvar="CIRCUITLAB_LLM_MODEL",
    )
    base_url: str | None = option(
        None,
        "OpenAI-compatible server, e.g. http://localhost:8000/v1 (env CIRCUITLAB_LLM_BASE_URL).",
        envvar="CIRCUITLAB_LLM_BASE_URL",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY",
        "Environment variable holding the API key; the key is never written anywhere.",
    )
    concurrency: int = option(8, "HTTP requests in flight.")
    timeout_s: float = option(
        600.0, "Seconds one reply may take, retries apart (openai).", flags=("--timeout",)
    )
    retries: int = 4
    json_mode: bool = False
    extra_body: dict[str, Any] | None = option(  # noqa: RUF009 - default None, never mutated
        None,
        "JSON object merged into every request body (openai), e.g. "
        '\'{"chat_template_kwargs": {"enable_thinking": false}, "top_p": 0.9}\'. It is written '
        "to config.json: never put a key in it.",
        parse=lambda text: json_object(text, "--extra-body"),
    )
    max_nodes: int | None = option(None, "Distil at most this many nodes \\[default: all].")
    questions_per_node: int = option(
        1,
        "Questions per node; from 2, of rotating types (conceptual, calculation, design "
        "trade-off, troubleshooting; each node starts one type further on).",
    )
    batch_size: int = option(8, "Questions (node x question) per batch.")
    question_tokens: int = option(64, "Token limit, designer.")
    answer_tokens: int = option(160, "Token limit, solver reasoning.")
    review_tokens: int = option(48, "Token limit, reviewer.")
    temperature: float = 0.0
    retry_temperature: float = 0.7
    max_attempts: int = option(2, "Tries per malformed reply.")
    max_revisions: int = option(1, "Revise rounds per node.")
    question_near_duplicate: float = 0.9
    seed: int = option(0, "Seed for node selection and sampling.")
    threads: int = option(1, "Embedded: torch threads while generating; 0: torch default.")

    def __post_init__(self) -> None:
        require(self.backend in BACKENDS, f"backend {self.backend!r}: use {' or '.join(BACKENDS)}")
        if self.backend == "openai":
            require(bool(self.base_url), "the openai backend needs --base-url")
            require(bool(self.model), "the openai backend needs --model (the served name)")
        require(
            self.max_nodes is None or self.max_nodes >= 1,
            f"max_nodes {self.max_nodes}: at least 1",
        )
        require(self.batch_size >= 1, f"batch_size {self.batch_size}: at least 1")
        require(
            self.questions_per_node >= 1,
            f"questions_per_node {self.questions_per_node}: at least 1",
        )
        require(self.max_attempts >= 1, f"max_attempts {self.max_attempts}: at least 1")
        require(self.max_revisions >= 0, f"max_revisions {self.max_revisions}: must be >= 0")
        for name in ("question_tokens", "answer_tokens", "review_tokens"):
            require(getattr(self, name) >= 8, f"{name} {getattr(self, name)}: at least 8")
        require(0 < self.question_near_duplicate <= 1, "question_near_duplicate: in (0, 1]")
        require(self.threads >= 0, f"threads {self.threads}: 0 (torch default) or more")
        require(self.timeout_s > 0, f"timeout {self.timeout_s}: must be positive")
        if self.extra_body is not None:
            require(
                isinstance(self.extra_body, dict),
                f"extra_body {self.extra_body!r}: must be a JSON object (a TOML table)",
            )
            check_extra_body(self.extra_body)


def json_object(text: str, what: str) -> dict[str, Any]:
    """`text` read as a JSON object, or a one-line error naming the option."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CircuitlabError(f"{what}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise CircuitlabError(f"{what}: must be a JSON object {{...}}, got {text[:60]!r}")
    return value


# keys the client sets from the config and the request, and where to set each instead: an
# override would send another model's name, drop the prompt or pin the token budget that a
# truncated reply's retry doubles
_OWN_KEYS = {
    "model": "--model",
    "messages": "the agents' prompts",
    "max_tokens": "--question-tokens / --answer-tokens / --review-tokens",
    "temperature": "temperature / retry_temperature in a --config file",
    "seed": "--seed",
}
_CREDENTIAL_KEY = re.compile(
    r"(?i)^(?:.*[-_])?(?:api[-_]?key|key|token|secret|password|authorization|auth)$"
)


def check_extra_body(extra: dict[str, Any], api_key: str | None = None) -> None:
    """Refuse an extra body that would put a credential into config.json (where the whole
    config is written, and which run directories share) or override the client's keys."""
    for key in sorted(set(extra) & set(_OWN_KEYS)):
        raise CircuitlabError(f"extra_body sets {key}, which circuitlab sets: use {_OWN_KEYS[key]}")

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                require(
                    not _CREDENTIAL_KEY.match(str(key)),
                    f"extra_body key {str(key)!r} looks like a credential, and extra_body is "
                    "written to config.json: give the key through the variable named by "
                    "--api-key-env",
                )
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(extra)
    text = json.dumps(extra)
    require(
        redact(text, [api_key]) == text,
        "extra_body holds a credential (a bearer token or the API key), and extra_body is "
        "written to config.json: give the key through the variable named by --api-key-env",
    )


def make_backend(
    config: DistillConfig, cache_dir: str | Path, api_key: str | None = None, lm: Any = None
) -> CachedBackend:
    """The configured backend behind the on-disk response cache."""
    if config.backend == "embedded":
        from circuitlab.analog.llm.embedded import EmbeddedBackend

        inner: Backend = EmbeddedBackend(
            config.model, batch_size=config.batch_size, lm=lm, threads=config.threads
        )
    else:
        import os

        from circuitlab.analog.llm.openai_http import HTTPConfig, OpenAIBackend

        if config.extra_body:  # the key is known only now
            check_extra_body(config.extra_body, api_key or os.environ.get(config.api_key_env))
        http = HTTPConfig(
            base_url=str(config.base_url),
            model=str(config.model),
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            retries=config.retries,
            concurrency=config.concurrency,
            json_mode=config.json_mode,
            extra_body=config.extra_body,
        )
        inner = OpenAIBackend(http, api_key=api_key)
    return CachedBackend(inner, cache_dir)


def select_nodes(nodes: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict]:
    """Up to `limit` nodes, taken round-robin across top-level branches (shuffled within a
    branch by `seed`), so a small run still covers the taxonomy."""
    if limit is None or limit >= len(nodes):
        return list(nodes)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for node in nodes:
        groups[top_branch((node.get("tags") or [UNTAGGED])[0])].append(node)
    rng = random.Random(seed)
    order = sorted(groups)
    for name in order:
        rng.shuffle(groups[name])
    picked: list[dict[str, Any]] = []
    while len(picked) < limit:
        for name in order:
            if groups[name] and len(picked) < limit:
                picked.append(groups[name].pop(0))
    return picked


_CONTENT = re.compile(r"[a-z0-9]{4,}")


def grounding(text: str, source: str) -> float:
    """Share of the content words (4+ letters) of `text` that occur in `source`."""
    words = set(_CONTENT.findall(text.lower()))
    if not words:
        return 0.0
    return round(len(words & set(_CONTENT.findall(source.lower()))) / len(words), 3)


def _drop_cut_line(path: Path) -> None:
    """Remove a last line cut short by a kill, so appends start on a clean line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data[: data.rfind(b"\n") + 1]
    with atomic_open(path, "wb") as handle:
        handle.write(keep)


# the cause of a reply that hit its token limit twice (ChatResult.truncated)
TRUNCATED_CAUSE = "truncated (finish_reason length)"

# what one node may hand an agent: ~12k tokens, far above a --max-words node (150 words is
# about 1k characters), far below a request no server takes
MAX_NODE_CHARS = 50_000


@dataclass
class _Item:
    node: dict[str, Any]
    index: int = 0  # which of the node's questions (0 .. questions_per_node - 1)
    kind: str | None = None  # its question type (agents.QUESTION_TYPES)
    question: str = ""
    reasoning: str = ""
    answer: str = ""
    verdict: str = ""
    feedback: str = ""
    revisions: int = 0
    models: dict[str, str] | None = None
    reasoning_source: str = ""  # "thinking" (a reasoning teacher's) or "reply"
    reply_reasoning: str | None = None
    repaired: list[str] | None = None
    failure: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.models, self.repaired = {}, []


# appended to a cut reply before parsing: it lands in whatever string the cut fell in
_CUT = "\ue000"


def _whole_fields(result: ChatResult, stepwise: bool) -> dict[str, Any]:
    """The fields of a reply that its token limit did not cut: all of a complete reply's;
    of a cut one, those the cut did not fall in (a marker appended at the cut ends up in
    that field's value or key), when the backend is asked field by field and so can be
    asked for the missing ones; none otherwise."""
    if result.error is not None or (result.truncated and not stepwise):
        return {}
    try:
        value, _ = agents.parse_object((result.text or "") + (_CUT if result.truncated else ""))
    except MalformedOutput:
        return {}
    return {
        k: v for k, v in value.items() if _CUT not in k and not (isinstance(v, str) and _CUT in v)
    }


def _with_thinking(role: Role, value: dict[str, Any], thinking: str | None) -> dict[str, Any]:
    """A reasoning teacher's thinking is the reasoning the student learns (the released data's
    <think> part); what the reply itself calls reasoning is kept beside it as reply_reasoning.
    Roles without a reasoning field ignore the thinking: only their reply counts."""
    if "reasoning" not in role.fields:
        return value
    if not thinking:
        return {**value, "reasoning_source": "reply"}
    mine = {"reply_reasoning": value["reasoning"]} if value.get("reasoning") else {}
    return {**value, **mine, "reasoning": thinking, "reasoning_source": "thinking"}


class Distiller:
    """Runs the three agents over batches of nodes with one (cached) backend."""

    def __init__(self, config: DistillConfig, backend: CachedBackend) -> None:
        self.config = config
        self.backend = backend
        self.questions = Deduplicator(config.question_near_duplicate, min_words=3)

    def remember(self, record: dict[str, Any]) -> None:
        self.questions.check(record["id"], record["question"])

    def options(self, attempt: int) -> dict[str, Any]:
        if attempt == 0:
            return {"temperature": self.config.temperature, "seed": self.config.seed}
        return {"temperature": self.config.retry_temperature, "seed": self.config.seed + attempt}

    def call(
        self,
        role: Role,
        items: Sequence[_Item],
        build: Callable[..., ChatRequest],
        max_tokens: int,
    ) -> list[tuple[_Item, dict[str, Any]]]:
        """Ask `role` for every item, retrying malformed replies; failures are set on items.

        `build(item, prefill=..., max_tokens=..., temperature=..., seed=...)` makes the
        request. A backend that continues prefilled replies is asked field by field (see
        Role.prefill); later fields get at most 48 tokens. A reply cut off by its token
        limit is asked once more with twice the budget; cut off again, it is the item's
        failure (no sampling retry: a cut reply is not a malformed one, and a repaired
        half-answer must never become training data).
        """
        pending = list(items)
        done: list[tuple[_Item, dict[str, Any]]] = []
        given_up: list[_Item] = []
        last: dict[int, tuple[str, str, str | None]] = {}
        stepwise = self.backend.continues_prefill
        for attempt in range(self.config.max_attempts):
            if not pending:
                break
            options = self.options(attempt)
            values: dict[int, dict[str, Any]] = {id(item): {} for item in pending}
            repaired: dict[int, bool] = {}
            failed: set[int] = set()
            truncated: set[int] = set()
            thinking: dict[int, str] = {}
            for number, name in enumerate(role.fields if stepwise else role.fields[:1]):
                asking = [it for it in pending if id(it) not in failed]
                asking = [it for it in asking if name not in values[id(it)]]
                if not asking:
                    continue
                tokens = max_tokens if number == 0 else min(max_tokens, 48)
                results = self.ask(role, build, asking, tokens, values, options)
                whole = [_whole_fields(r, stepwise) for r in results]
                cut = [k for k, w in enumerate(whole) if results[k].truncated and name not in w]
                again = self.ask(role, build, [asking[k] for k in cut], 2 * tokens, values, options)
                for k, result in zip(cut, again, strict=True):
                    results[k], whole[k] = result, _whole_fields(result, stepwise)
                for item, result, kept in zip(asking, results, whole, strict=True):
                    if result.error is not None:
                        last[id(item)] = ("backend_error", result.error, None)
                        failed.add(id(item))
                        continue
                    if result.truncated and name not in kept:
                        detail = f"cut off at {tokens} tokens, then at {2 * tokens}"
                        last[id(item)] = (TRUNCATED_CAUSE, detail, result.text)
                        failed.add(id(item))
                        truncated.add(id(item))
                        continue
                    try:
                        value, fixed = agents.parse_object(result.text)
                    except MalformedOutput as e:
                        last[id(item)] = (e.cause, e.detail, result.text)
                        failed.add(id(item))
                        continue
                    if result.truncated:  # the asked field is whole; the one cut is asked next
                        value, fixed = kept, False
                    repaired[id(item)] = repaired.get(id(item), False) or fixed
                    if result.reasoning:
                        thinking[id(item)] = result.reasoning
                    known = values[id(item)]
                    known.update({k: v for k, v in value.items() if k not in known})
                    item.models = {**(item.models or {}), role.name: result.model}
                    last[id(item)] = ("schema", "", result.text)
            retry = []
            for item in pending:
                if id(item) in truncated:
                    given_up.append(item)
                    continue
                if id(item) in failed:
                    retry.append(item)
                    continue
                value = _with_thinking(role, values[id(item)], thinking.get(id(item)))
                try:
                    value = agents.check(role, value)
                except MalformedOutput as e:
                    last[id(item)] = (e.cause, e.detail, last[id(item)][2])
                    retry.append(item)
                    continue
                if repaired.get(id(item)):
                    assert item.repaired is not None
                    item.repaired.append(role.name)
                done.append((item, value))
            pending = retry
        for item in [*pending, *given_up]:
            cause, detail, raw = last[id(item)]
            item.failure = {
                "stage": role.name,
                "cause": f"{role.name}:{cause}",
                "detail": detail[:300],
                "raw": (raw or "")[:500],
                # the server, not the node, failed (network, 5xx, 429 or 401 exhausted): a
                # rerun asks again instead of counting the node as done
                "retryable": cause == "backend_error",
            }
        return done

    def ask(
        self,
        role: Role,
        build: Callable[..., ChatRequest],
        items: Sequence[_Item],
        max_tokens: int,
        known: dict[int, dict[str, Any]],
        options: dict[str, Any],
    ) -> list[ChatResult]:
        """One request per item; a prefilling backend continues from the fields known."""
        stepwise = self.backend.continues_prefill
        requests = [
            build(
                it,
                prefill=role.prefill(known[id(it)]) if stepwise else "",
                max_tokens=max_tokens,
                **options,
            )
            for it in items
        ]
        return self.backend.generate(requests)

    def run_batch(self, units: Sequence[tuple[dict[str, Any], int, str | None]]) -> list[_Item]:
        """Distil a batch of (node, question index, question type) units."""
        c = self.config
        items = [_Item(node, index=index, kind=kind) for node, index, kind in units]
        for item in items:  # a node too big to send is that node's failure, not a request
            size = len(str(item.node.get("text", "")))
            if size > MAX_NODE_CHARS:
                item.failure = {
                    "stage": "designer", "cause": "node_too_large", "raw": "",
                    "detail": f"{size:,} characters; at most {MAX_NODE_CHARS:,} are sent "
                    "(make nodes with `analog nodes --max-words`)",
                }  # fmt: skip
        designed = self.call(
            agents.DESIGNER,
            [it for it in items if it.failure is None],
            lambda it, **o: agents.designer_request(it.node, kind=it.kind, **o),
            c.question_tokens,
        )
        solvable = []
        for item, value in designed:
            match = self.questions.check(f"q-{_unit_id(item)}", value["question"])
            if match is not None:
                item.failure = {
                    "stage": "designer",
                    "cause": "duplicate_question",
                    "detail": f"{match.kind} duplicate of {match.of} ({match.similarity})",
                    "raw": value["question"],
                }
            else:
                item.question = value["question"]
                solvable.append(item)
        self.solve(solvable, feedback=False)
        reviewing = [it for it in solvable if it.failure is None]
        for round_ in range(c.max_revisions + 1):
            reviewed = self.call(
                agents.REVIEWER,
                reviewing,
                lambda it, **o: agents.reviewer_request(
                    it.node, it.question, it.reasoning, it.answer, **o
                ),
                c.review_tokens,
            )
            revise = []
            for item, value in reviewed:
                item.verdict, item.feedback = value["verdict"], value.get("feedback", "")
                if item.verdict == "revise" and round_ < c.max_revisions:
                    revise.append(item)
            if not revise:
                break
            for item in revise:
                item.revisions += 1
            self.solve(revise, feedback=True)
            reviewing = [it for it in revise if it.failure is None]
        return items

    def solve(self, items: list[_Item], feedback: bool) -> None:
        c = self.config
        solved = self.call(
            agents.SOLVER,
            items,
            lambda it, **o: agents.solver_request(
                it.node, it.question, it.feedback if feedback else None, **o
            ),
            c.answer_tokens,
        )
        for item, value in solved:
            item.reasoning, item.answer = value["reasoning"], value["answer"]
            item.reasoning_source = value["reasoning_source"]
            item.reply_reasoning = value.get("reply_reasoning")


def _unit_id(item: _Item) -> str:
    """The node's id, with the question index after the first (a one-question run's ids
    are those it always had)."""
    node_id = str(item.node["id"]).removeprefix("n-")
    return node_id if item.index == 0 else f"{node_id}-{item.index}"


def unit_key(record: dict[str, Any]) -> tuple[str, int]:
    """What a qa or failure line marks done: the node and which of its questions (records
    written before questions_per_node existed are a node's first)."""
    return record["node_id"], int(record.get("question_index", 0))


def qa_record(item: _Item) -> dict[str, Any]:
    node = item.node
    models = item.models or {}
    return {
        "id": f"qa-{_unit_id(item)}",
        "node_id": node["id"],
        "question_index": item.index,
        "question_type": item.kind,
        "question": item.question,
        "reasoning": item.reasoning,
        "answer": item.answer,
        "reasoning_source": item.reasoning_source,
        "reply_reasoning": item.reply_reasoning,
        # The released AnalogSeeker data's shape: prompt, and a response with the reasoning
        # in <think> and the final answer in <answer>.
        "prompt": item.question,
        "response": f"<think>\n{item.reasoning}\n</think>\n<answer>\n{item.answer}\n</answer>",
        "verdict": item.verdict,
        "feedback": item.feedback,
        "revisions": item.revisions,
        "grounding": grounding(f"{item.reasoning} {item.answer}", node["text"]),
        "concept": node.get("concept"),
        "kind": node.get("kind"),
        "tags": node.get("tags", []),
        "branches": node.get("branches", []),
        "tagged_by": node.get("tagged_by"),
        "provenance": node["provenance"],
        "source": node["text"],
        "models": {
            "question": models.get("designer"),
            "reasoning": models.get("solver"),
            "answer": models.get("solver"),
            "review": models.get("reviewer"),
        },
        "repaired_json": item.repaired or [],
    }


def failure_record(item: _Item) -> dict[str, Any]:
    node = item.node
    return {
        "node_id": node["id"],
        "question_index": item.index,
        "question_type": item.kind,
        **(item.failure or {}),
        "question": item.question or None,
        "tags": node.get("tags", []),
        "branches": node.get("branches", []),
        "provenance": node["provenance"],
    }


def summarize(
    selected: list[dict[str, Any]],
    qa: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    questions_per_node: int = 1,
) -> dict[str, Any]:
    verdicts = Counter(r["verdict"] for r in qa)
    processed = len(qa) + len(failures)
    accepted_by_type = Counter(r.get("question_type") for r in qa if r["verdict"] == "accept")
    by_branch: dict[str, Counter[str]] = defaultdict(Counter)
    for node in selected:
        for branch in node.get("branches") or [UNTAGGED]:
            by_branch[branch]["nodes"] += 1
    for record in qa:
        for branch in record.get("branches") or [UNTAGGED]:
            by_branch[branch]["qa"] += 1
            by_branch[branch]["accepted"] += record["verdict"] == "accept"
    for record in failures:
        for branch in record.get("branches") or [UNTAGGED]:
            by_branch[branch]["failed"] += 1
    models: dict[str, list[str]] = defaultdict(list)
    for record in qa:
        for part, model in record["models"].items():
            if model and model not in models[part]:
                models[part].append(model)
    return {
        "nodes_selected": len(selected),
        # nodes with every question done; for one question a node, the processed count
        "nodes_processed": sum(
            n >= questions_per_node
            for n in Counter(r["node_id"] for r in (*qa, *failures)).values()
        ),
        "questions_per_node": questions_per_node,
        "questions_selected": len(selected) * questions_per_node,
        "questions_processed": processed,
        "qa_records": len(qa),
        "qa_per_node": round(len(qa) / len(selected), 3) if selected else None,
        "accepted_per_node": round(verdicts["accept"] / len(selected), 3) if selected else None,
        "accepted_by_question_type": dict(sorted((str(k), v) for k, v in accepted_by_type.items())),
        "accepted": verdicts["accept"],
        "revise": verdicts["revise"],
        "rejected": verdicts["reject"],
        "failed": len(failures),
        "retryable": sum(bool(f.get("retryable")) for f in failures),
        # per question asked
        "acceptance_rate": round(verdicts["accept"] / processed, 4) if processed else None,
        "failures_by_cause": dict(Counter(f["cause"] for f in failures).most_common()),
        "repaired_json": dict(Counter(r for q in qa for r in q.get("repaired_json", []))),
        "mean_grounding": round(sum(q["grounding"] for q in qa) / len(qa), 3) if qa else None,
        "coverage": {
            b: {**c, "qa_per_node": round(c["qa"] / c["nodes"], 3) if c["nodes"] else None}
            for b, c in sorted(by_branch.items())
        },
        "models": dict(models),
    }


def distill(
    nodes_file: str | Path,
    out: str | Path,
    config: DistillConfig | None = None,
    *,
    api_key: str | None = None,
    lm: Any = None,
    cache_dir: str | Path | None = None,
    on_batch: Callable[[dict[str, int]], None] | None = None,
    stop_after_batches: int | None = None,
) -> dict[str, Any]:
    """Distil the nodes of `nodes_file` into run directory `out`; resumes a killed run.

    `on_batch(counts)` is called after the run starts and after each batch with the
    running accepted / revise / rejected / failed / done counts. Returns the summary,
    also written to results.json.
    """
    config = config or DistillConfig()
    nodes_path = Path(nodes_file)
    if nodes_path.is_dir():
        nodes_path = nodes_path / "nodes.jsonl"
    nodes = read_nodes(nodes_path)
    if not nodes:
        raise CircuitlabError(f"{nodes_path} holds no nodes: nothing to distil")
    digest = hashlib.sha256(nodes_path.read_bytes()).hexdigest()[:16]
    # the backend is built (its settings and model checked) before config.json is written:
    # a refused run must not leave a config that refuses the corrected rerun
    backend = make_backend(config, cache_dir or Path(out) / "llm-cache", api_key=api_key, lm=lm)
    # a run recorded before a setting existed (extra_body) ran as its default: it resumes
    run = RunDir.open(
        out, {**config_to_dict(config), "nodes_sha256": digest}, config_to_dict(DistillConfig())
    )
    qa_path, failures_path = run.path / "qa.jsonl", run.path / "failures.jsonl"
    for path in (qa_path, failures_path):
        _drop_cut_line(path)
    qa = read_jsonl(qa_path, mode="run") if qa_path.exists() else []
    failures = read_jsonl(failures_path, mode="run") if failures_path.exists() else []
    final = [r for r in failures if not r.get("retryable")]
    if len(final) < len(failures):  # backend failures are asked again: drop their records
        atomic_write_text(failures_path, "".join(json.dumps(r) + "\n" for r in final))
        failures = final
    selected = select_nodes(nodes, config.max_nodes, config.seed)
    done = {unit_key(r) for r in (*qa, *failures)}
    distiller = Distiller(config, backend)
    for record in qa:
        distiller.remember(record)
    per_node = config.questions_per_node
    # node i's question k is of type i + k: every type comes first for some node. One
    # question a node is on its main concept, untyped: the embedded 135M model answers a
    # typed ask (a calculation, a trade-off) with reasoning too long for its budget, and the
    # one-node smoke demo then has no record
    pending = [
        (node, k, agents.question_type(i + k) if per_node > 1 else None)
        for i, node in enumerate(selected)
        for k in range(per_node)
        if (node["id"], k) not in done
    ]
    counts = Counter({"accept": 0, "revise": 0, "reject": 0})
    counts.update(r["verdict"] for r in qa)
    counts["failed"] = len(failures)
    counts["done"] = len(done)
    counts["total"] = len(selected) * per_node
    if on_batch:
        on_batch(dict(counts))
    started, new_records = time.perf_counter(), 0
    for number, start in enumerate(range(0, len(pending), config.batch_size)):
        if stop_after_batches is not None and number >= stop_after_batches:
            break
        batch = pending[start : start + config.batch_size]
        items = distiller.run_batch(batch)
        for item in items:  # one line per node's question: its done marker
            if item.failure is None:
                record = qa_record(item)
                append_jsonl(qa_path, [record])
                qa.append(record)
                counts[record["verdict"]] += 1
            else:
                record = failure_record(item)
                append_jsonl(failures_path, [record])
                failures.append(record)
                counts["failed"] += 1
            counts["done"] += 1
            new_records += 1
        if on_batch:
            on_batch(dict(counts))
    seconds = time.perf_counter() - started
    summary = summarize(selected, qa, failures, per_node)
    summary.update(
        backend=config.backend,
        model=backend.model,
        # complete: every question has a final outcome; backend failures are not final
        complete=summary["questions_processed"] == summary["questions_selected"]
        and summary["retryable"] == 0,
        session={
            "nodes": new_records,
            "seconds": round(seconds, 2),
            "records_per_minute": round(60 * new_records / seconds, 2) if seconds > 0 else None,
            "cache_hits": backend.stats.hits,
            "cache_misses": backend.stats.misses,
        },
    )
    run.write_results(summary)
    return summary
