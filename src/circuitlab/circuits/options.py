"""Help texts and command-line parsers that several circuits configs share.

A setting that means the same in several commands (the task, the model, the LM's dtype)
says so in one place; each config's field points here instead of restating it.
"""

from __future__ import annotations

from circuitlab.circuits.tasks import TASKS
from circuitlab.core.config import comma_list
from circuitlab.core.errors import CircuitlabError

TASK_HELP = f"One of {', '.join(TASKS)}, or a .jsonl file of prompt pairs (see README)."
MODEL_HELP = "embedded (SmolLM2-135M-Instruct), a .gguf file, a model directory or a hub id."
THREADS_HELP = "Torch CPU threads (0: default; 1 on a busy CPU)."

kinds = comma_list()


def layer_list(text: str) -> tuple[int, ...]:
    """`20-29` or `0,5,9` (or a mix) as layer indices."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        try:
            start, stop = int(first), int(last or first)
        except ValueError:
            raise CircuitlabError(f"bad --layers {text!r}: use e.g. 20-29 or 0,5,9") from None
        if stop < start:  # an empty range would silently mean "every layer"
            raise CircuitlabError(
                f"bad --layers {text!r}: {part} runs backwards; write the lower layer first"
            )
        out.extend(range(start, stop + 1))
    if not out:
        raise CircuitlabError(f"bad --layers {text!r}: no layers given (use e.g. 20-29 or 0,5,9)")
    return tuple(out)


def reference_pairs(items: list[str]) -> tuple[tuple[str, str], ...]:
    """Repeated `--reference TASK=SPEC` options as (task, spec) pairs."""
    pairs = []
    for item in items:
        task, sep, spec = item.partition("=")
        if not sep or not task or not spec:
            raise CircuitlabError(f"bad --reference {item!r}: use TASK=FILE, e.g. ioi=ref.json")
        pairs.append((task, spec))
    return tuple(pairs)


def show_pairs(pairs: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{task}={spec}" for task, spec in pairs)
