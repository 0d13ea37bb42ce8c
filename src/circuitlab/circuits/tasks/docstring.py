'''Docstring completion (Heimersheim & Janiak 2023): name the next documented argument.

A positive is a Python function whose docstring documents its arguments in order and stops at
the `:param` of the third one:

    def port(self, old, new, load, size, files, last):
        """oil column piece

        :param load: crime population
        :param size: unit dark
        :param

The answer is " files". Settings follow the source: 3 matching arguments (documented),
2 def-prefix arguments before them, 1 def-suffix argument after, a method description of 3
words, argument descriptions of 2 words. Wrong answers are the other five argument names;
the metric is logit(answer) minus the largest wrong logit (ACDC's docstring metric).
Negatives are the `random_random` corruption: the def arguments and the documented ones are
all replaced by fresh random names, so the next name cannot be read off the prompt; the
metric on a negative uses its positive's answer and wrong names.
'''

from __future__ import annotations

from typing import Any

import numpy as np

from circuitlab.circuits.tasks.common import CircuitTask, check_pairs, single_tokens
from circuitlab.core.errors import CircuitlabError

N_MATCHING, N_PREFIX, N_SUFFIX, DESCRIPTION_WORDS, ARG_WORDS = 3, 2, 1, 3, 2

VARIABLES = (
    "load", "size", "files", "last", "data", "name", "value", "user", "item", "key", "path",
    "text", "mode", "node", "port", "file", "line", "page", "type", "word", "code", "color",
    "count", "date", "field", "group", "index", "input", "label", "level", "limit", "message",
    "model", "number", "option", "order", "output", "parent", "result", "role", "row",
    "source", "state", "status", "step", "target", "task", "title", "token", "url",
    "version", "view", "width", "height", "image", "query", "request", "response", "config",
    "context", "content", "email", "event", "filter", "format", "host", "info", "start",
    "end", "error", "shape", "action", "parser", "client", "server", "table", "store",
    "session", "module", "block", "frame", "batch", "scale", "offset", "prefix", "suffix",
    "seed", "tag", "base", "header", "object", "match", "point", "buffer", "channel",
)  # fmt: skip

WORDS = (
    "oil", "column", "piece", "crime", "population", "unit", "dark", "river", "house",
    "green", "small", "table", "paper", "music", "light", "stone", "water", "world", "heart",
    "field", "story", "bird", "horse", "money", "power", "plant", "night", "dream", "glass",
    "cloud", "train", "apple", "chair", "bread", "smile", "voice", "sugar", "metal", "board",
    "wind", "floor", "shirt", "ocean", "sheep", "queen", "storm", "tiger", "forest", "hill",
    "lamp", "coat", "fire", "snow", "rain", "king", "door", "road", "wall", "ship", "star",
)  # fmt: skip

FUNCTIONS = (
    "port", "run", "load", "update", "get", "set", "create", "check", "build", "parse",
    "send", "read", "write", "process", "handle", "compute", "render", "save", "open", "fit",
)  # fmt: skip


def render(
    function: str,
    args: list[str],
    description: list[str],
    documented: list[str],
    arg_descriptions: list[list[str]],
) -> str:
    lines = [f"def {function}(self, {', '.join(args)}):", f'    """{" ".join(description)}', ""]
    for name, words in zip(documented, arg_descriptions, strict=True):
        lines.append(f"    :param {name}: {' '.join(words)}")
    lines.append("    :param")
    return "\n".join(lines)


def make_docstring(tokenizer: Any, n: int = 250, seed: int = 0) -> CircuitTask:
    """`n` docstring pairs for `tokenizer`, seeded."""
    if n < 1:
        raise CircuitlabError(f"need at least one docstring prompt, got {n}")
    n_args = N_PREFIX + N_MATCHING + N_SUFFIX
    names = single_tokens(
        tokenizer, VARIABLES, what="docstring argument names", need=2 * n_args + 2
    )
    words = list(single_tokens(tokenizer, WORDS, what="docstring words", need=DESCRIPTION_WORDS))
    pool = list(names)
    rng = np.random.default_rng(seed)
    positives, negatives, good, bad = [], [], [], []
    attempts = 0
    while len(positives) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise CircuitlabError("could not draw docstring prompts of matching token length")
        drawn = [
            pool[i] for i in rng.choice(len(pool), size=2 * n_args + N_MATCHING - 1, replace=False)
        ]
        args, fresh = drawn[:n_args], drawn[n_args:]
        matching = args[N_PREFIX : N_PREFIX + N_MATCHING]
        function = FUNCTIONS[rng.integers(len(FUNCTIONS))]
        description = [words[i] for i in rng.integers(len(words), size=DESCRIPTION_WORDS)]
        arg_words = [
            [words[i] for i in rng.integers(len(words), size=ARG_WORDS)]
            for _ in range(N_MATCHING - 1)
        ]
        positive = render(function, args, description, matching[:-1], arg_words)
        # random_random: new def arguments and new documented names, disjoint from each other
        negative = render(function, fresh[:n_args], description, fresh[n_args:], arg_words)
        if not check_pairs(tokenizer, [positive], [negative]):
            continue
        answer = matching[-1]
        positives.append(positive)
        negatives.append(negative)
        good.append((names[answer],))
        bad.append(tuple(names[a] for a in args if a != answer))
    return CircuitTask(
        name="docstring",
        metric="logit_diff",
        positives=tuple(positives),
        negatives=tuple(negatives),
        good=tuple(good),
        bad=tuple(bad),
        description="docstring (Heimersheim & Janiak 2023): logit(next :param name) - max "
        "logit(other argument names); negatives are random_random corruptions",
    )
