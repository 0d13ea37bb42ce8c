"""Published head-level circuits (layer.head) for GPT-2 small and attn-only-4l, with sources.

Sources disagree on a few heads; each disagreement is kept as its own named variant so that a
score always says which ground truth it used. `default` marks the canonical variant.
The lists are data: they live here (not in a package data file) so they ship with the code.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.core.errors import CircuitlabError


@dataclass(frozen=True)
class LiteratureCircuit:
    model: str  # the model the circuit was found in (HF id where one exists)
    task: str
    variant: str
    heads: tuple[tuple[int, int], ...]
    citation: str
    note: str = ""
    default: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{layer}.{head}" for layer, head in self.heads)


def _heads(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in text.split():
        layer, head = item.split(".")
        out.append((int(layer), int(head)))
    return tuple(out)


_IOI_COMMON = (
    "2.2 4.11 "  # previous token
    "0.1 3.0 0.10 "  # duplicate token
    "5.5 5.8 5.9 6.9 "  # induction
    "7.3 7.9 8.6 8.10 "  # S-inhibition
    "10.7 11.10 "  # negative name movers
    "9.9 9.6 10.0 "  # name movers
    "10.10 10.6 10.2 10.1 11.2 9.7 11.9 "  # backup name movers (without 9.0 / 11.3)
)

WANG = (
    "Wang, Variengien, Conmy, Shlegeris, Steinhardt. Interpretability in the Wild: a Circuit "
    "for Indirect Object Identification in GPT-2 small. ICLR 2023, arXiv:2211.00593; as "
    "encoded in ACDC's IOI_CIRCUIT (Conmy et al. 2023, arXiv:2304.14997)"
)
ONEILL = (
    "O'Neill, Bui. Sparse Autoencoders Enable Scalable and Reliable Circuit Identification "
    "in Language Models. arXiv:2405.12522 (2024), code github.com/charlieoneill11/sae-circuits"
)
ACDC = (
    "Conmy, Mavor-Parker, Lynch, Heimersheim, Garriga-Alonso. Towards Automated Circuit "
    "Discovery for Mechanistic Interpretability. NeurIPS 2023, arXiv:2304.14997"
)
HANNA = (
    "Hanna, Liu, Variengien. How does GPT-2 compute greater-than? Interpreting mathematical "
    "abilities in a pre-trained language model. NeurIPS 2023, arXiv:2305.00586"
)
HEIMERSHEIM = (
    "Heimersheim, Janiak. A circuit for Python docstrings in a 4-layer attention-only "
    "transformer. Alignment Forum 2023; heads as in ACDC's docstring ground truth"
)

CIRCUITS: tuple[LiteratureCircuit, ...] = (
    LiteratureCircuit(
        "gpt2",
        "ioi",
        "wang",
        _heads(_IOI_COMMON + "9.0"),
        WANG,
        "26 heads; canonical (ACDC IOI_CIRCUIT)",
        default=True,
    ),
    LiteratureCircuit(
        "gpt2",
        "ioi",
        "sae-paper",
        _heads(_IOI_COMMON + "11.3"),
        ONEILL,
        "the SAE paper's code lists 11.3 in place of 9.0",
    ),
    LiteratureCircuit(
        "gpt2",
        "greater-than",
        "acdc",
        _heads("0.1 0.3 0.5 5.5 6.1 6.9 7.10 8.11 9.1"),
        ACDC,
        "9 heads, ACDC's version (ACDC also counts MLPs 0-3 and 8-11, not listed here)",
        default=True,
    ),
    LiteratureCircuit(
        "gpt2",
        "greater-than",
        "hanna",
        _heads("5.1 5.5 6.9 7.10 8.8 8.11 9.1"),
        HANNA,
        "Hanna et al.'s own mid-layer attention heads",
    ),
    LiteratureCircuit(
        "attn-only-4l",
        "docstring",
        "acdc",
        _heads("0.5 1.2 1.4 2.0 3.0 3.6"),
        HEIMERSHEIM,
        "6 heads, ACDC canonical",
        default=True,
    ),
    LiteratureCircuit(
        "attn-only-4l",
        "docstring",
        "sae-paper",
        _heads("0.5 1.0 1.4 2.0 3.0 3.6"),
        ONEILL,
        "the SAE paper's code has 1.0 in place of 1.2",
    ),
)

# How a model spec names the models above (HF ids and common local names).
ALIASES = {
    "gpt2": "gpt2",
    "gpt2-small": "gpt2",
    "openai-community/gpt2": "gpt2",
    "attn-only-4l": "attn-only-4l",
    "NeelNanda/Attn_Only_4L_512": "attn-only-4l",
    "attn_only_4l_512": "attn-only-4l",
}


def canonical_model(name: str) -> str | None:
    """The literature model a model name refers to, or None if it has no published circuit."""
    return (
        ALIASES.get(name) or ALIASES.get(name.lower()) or ALIASES.get(name.split("/")[-1].lower())
    )


def literature_circuit(model: str, task: str, variant: str | None = None) -> LiteratureCircuit:
    """The published circuit of `task` in `model` (`variant` None: the canonical one)."""
    key = canonical_model(model)
    found = [c for c in CIRCUITS if c.model == key and c.task == task]
    if not found:
        known = sorted({(c.model, c.task) for c in CIRCUITS})
        raise CircuitlabError(
            f"no published circuit for task {task!r} in model {model!r}; known: "
            + ", ".join(f"{m}/{t}" for m, t in known)
            + ". For other models compute one: circuitlab circuits reference"
        )
    if variant is None:
        return next(c for c in found if c.default)
    for circuit in found:
        if circuit.variant == variant:
            return circuit
    raise CircuitlabError(
        f"no variant {variant!r} of {key}/{task}; known: {', '.join(c.variant for c in found)}"
    )
