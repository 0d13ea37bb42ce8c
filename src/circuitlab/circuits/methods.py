"""The discovery methods, registered once, and the settings they run with.

`REGISTRY` maps each method name to how it runs; `METHODS`, `DEFAULT_METHODS`, the help
text and which methods evaluate repeats over seeds all derive from it, so adding a method
is one entry here. Methods that share a computation share a runner, called once for all of
them (the SAE node and edge scores come from one SAE; attribution and HISP from one
backward pass). `run_methods` runs the requested ones on the same prompts and head outputs:
    sae            the SAE node method (O'Neill & Bui 2024)
    sae-edge       the SAE edge method, aggregated to heads (same SAE and codes as `sae`)
    attribution    attribution patching: one forward + backward per batch
    hisp           gradient-magnitude head importance (from the same backward pass)
    activation     single-head activation patching on `patch_num` pairs (the reference method)
    random         a seeded random ranking
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.circuits.heads import REDUCTIONS, head_outputs
from circuitlab.circuits.options import MODEL_HELP, TASK_HELP, THREADS_HELP
from circuitlab.circuits.ranking import Ranking
from circuitlab.circuits.sae import SAE_DTYPES, SAEConfig
from circuitlab.circuits.sae_method import NODE_SCORES
from circuitlab.circuits.tasks import CircuitTask
from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM

L1_BY_TASK = {"docstring": 0.05}  # the paper's lambda; 0.02 for every other task


@dataclass(frozen=True)
class MethodInputs:
    """What a runner gets: the model, the prompts, the settings and the wanted methods."""

    lm: LoadedLM
    task: CircuitTask
    config: DiscoveryConfig
    wanted: frozenset[str]
    outputs: HeadOutputs | None
    progress: bool


Runner = Callable[[MethodInputs], dict[str, Ranking]]


@dataclass(frozen=True)
class Method:
    run: Runner  # returns the rankings of every wanted method it computes
    help: str
    default: bool = True  # run when no --methods is given
    seeded: bool = True  # False: deterministic on fixed prompts, evaluate runs it once
    head_outputs: bool = False  # runs on the extracted head outputs (HeadOutputs)


def _sae(inputs: MethodInputs) -> dict[str, Ranking]:
    from circuitlab.circuits.sae_method import sae_discover

    config, outputs = inputs.config, inputs.outputs
    if outputs is None:
        outputs = extract(inputs.lm, inputs.task, config)
    result = sae_discover(
        outputs.positives,
        outputs.negatives,
        n_train=config.n_train,
        sae=config.sae_config(),
        normalised=config.normalised,
        node_score=config.node_score,
        permutations=config.null_permutations,
        edges="sae-edge" in inputs.wanted,
        seconds={"activations": outputs.seconds},
    )
    found = {"sae": result.node}
    if result.edge is not None:
        found["sae-edge"] = result.edge
    return found


def _gradients(inputs: MethodInputs) -> dict[str, Ranking]:
    from circuitlab.circuits.baselines.attribution import gradient_scores

    config = inputs.config
    attribution, hisp = gradient_scores(
        inputs.lm,
        inputs.task,
        ablation=config.attribution_ablation,
        batch_size=max(1, config.batch_size // 2),
        prepend_bos=config.prepend_bos,
        progress=inputs.progress,
    )
    return {"attribution": attribution, "hisp": hisp}


def _activation(inputs: MethodInputs) -> dict[str, Ranking]:
    from circuitlab.circuits.baselines.activation import activation_scores

    config = inputs.config
    ranking = activation_scores(
        inputs.lm,
        inputs.task,
        num=config.patch_num,
        ablation=config.patch_ablation,
        prepend_bos=config.prepend_bos,
        progress=inputs.progress,
    )
    return {"activation": ranking}


def _random(inputs: MethodInputs) -> dict[str, Ranking]:
    from circuitlab.circuits.baselines.random import random_scores
    from circuitlab.core.sites import find_sites

    sites = find_sites(inputs.lm.model)
    return {"random": random_scores(sites.n_layers, sites.n_heads, inputs.config.seed)}


REGISTRY: dict[str, Method] = {
    "sae": Method(_sae, "sae", head_outputs=True),
    "sae-edge": Method(_sae, "sae-edge", head_outputs=True),
    "attribution": Method(_gradients, "attribution", seeded=False),
    "hisp": Method(_gradients, "hisp", seeded=False),
    "activation": Method(
        _activation, "activation (exhaustive patching: slow)", default=False, seeded=False
    ),
    "random": Method(_random, "random"),
}
METHODS = tuple(REGISTRY)
DEFAULT_METHODS = tuple(name for name, method in REGISTRY.items() if method.default)
METHODS_HELP = "Comma-separated: " + ", ".join(m.help for m in REGISTRY.values()) + "."


def method_groups(methods: list[str] | tuple[str, ...]) -> list[list[str]]:
    """`methods` grouped by shared runner, in order of first appearance."""
    groups: dict[Runner, list[str]] = {}
    for name in methods:
        groups.setdefault(REGISTRY[name].run, []).append(name)
    return list(groups.values())


def methods_from_text(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise CircuitlabError(f"no methods in {text!r}: use some of {', '.join(METHODS)}")
    return methods


@dataclass(frozen=True)
class DiscoveryConfig:
    task: str = option("ioi", TASK_HELP)
    model: str = option("embedded", MODEL_HELP)
    # 250 positives + 250 negatives, as in the paper
    num: int = option(250, "Prompt pairs (positives and negatives each).")
    seed: int = option(0, "Seed of the SAE (training draw, init) and random ranking.")
    task_seed: int = option(0, "Seed of the prompt generator.")
    methods: tuple[str, ...] = option(DEFAULT_METHODS, METHODS_HELP, parse=methods_from_text)
    n_train: int = option(10, "SAE training prompts, drawn from the pooled prompts.")
    n_features: int = option(200, "SAE features.", flags=("--features",))
    l1: float = option(0.0, "SAE L1 coefficient; 0: 0.05 for docstring, else 0.02.")
    epochs: int = option(500, "SAE full-batch epochs.")
    lr: float = 1e-3
    reduction: str = option("mean", "Head output over positions: mean or last.")
    normalised: bool = option(False, "Node score |P\\N| / |P u N| instead of |P\\N|.")
    node_score: str = option(
        "count",
        "SAE node score: count (|P\\N|, the paper's) or null-z (z-score of |P\\N| among "
        "its counts with the positive/negative labels shuffled: rare codes no longer win).",
    )
    null_permutations: int = option(200, "Label shuffles of the null-z node score.")
    sae_dtype: str = option("float32", "SAE matrix products: float32 or bfloat16.")
    # bfloat16 extracts ~2x faster on AVX-512 CPUs
    dtype: str = option("float32", "LM weights: float32 or bfloat16.")
    threshold: float = option(0.5, "Circuit: heads scoring >= this x top score.")
    batch_size: int = 32
    prepend_bos: bool = False
    attribution_ablation: str = "resample"
    patch_num: int = option(8, "Prompt pairs for the activation-patching baseline.")
    patch_ablation: str = "mean"
    threads: int = option(0, THREADS_HELP)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {unknown}: use {', '.join(METHODS)}")
        require(bool(self.methods), "no methods given")
        require(self.num >= 1, f"num must be at least 1, got {self.num}")
        require(self.n_train >= 1, f"n_train must be at least 1, got {self.n_train}")
        require(
            self.n_train <= 2 * self.num,
            f"n_train ({self.n_train}) exceeds the {2 * self.num} pooled prompts",
        )
        require(self.reduction in REDUCTIONS, f"reduction must be one of {', '.join(REDUCTIONS)}")
        require(0 < self.threshold <= 1, f"threshold must be in (0, 1], got {self.threshold}")
        require(self.l1 >= 0, f"l1 must be >= 0, got {self.l1}")
        require(self.sae_dtype in SAE_DTYPES, f"sae_dtype must be one of {', '.join(SAE_DTYPES)}")
        require(self.dtype in SAE_DTYPES, f"dtype must be one of {', '.join(SAE_DTYPES)}")
        require(self.patch_num >= 1, f"patch_num must be at least 1, got {self.patch_num}")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        require(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        require(
            self.node_score in NODE_SCORES,
            f"node_score must be one of {', '.join(NODE_SCORES)}, got {self.node_score!r}",
        )
        require(
            self.null_permutations >= 1,
            f"null_permutations must be at least 1, got {self.null_permutations}",
        )
        require(
            not (self.normalised and self.node_score == "null-z"),
            "normalised does not change the null-z score (|P u N| is the same under every "
            "relabelling): drop one of them",
        )
        SAEConfig(
            n_features=self.n_features, l1=self.l1, lr=self.lr, epochs=self.epochs
        )  # validates

    @property
    def task_l1(self) -> float:
        if self.l1:
            return self.l1
        return L1_BY_TASK.get(Path(self.task).stem, 0.02)

    def sae_config(self) -> SAEConfig:
        return SAEConfig(
            n_features=self.n_features,
            l1=self.task_l1,
            lr=self.lr,
            epochs=self.epochs,
            seed=self.seed,
            dtype=self.sae_dtype,
        )


@dataclass(frozen=True)
class HeadOutputs:
    positives: torch.Tensor  # [n, L, H, d_model]
    negatives: torch.Tensor
    seconds: float


def extract(lm: LoadedLM, task: CircuitTask, config: DiscoveryConfig) -> HeadOutputs:
    start = time.perf_counter()
    kwargs: dict[str, Any] = {
        "reduction": config.reduction,
        "batch_size": config.batch_size,
        "prepend_bos": config.prepend_bos,
    }
    pos = head_outputs(lm, task.positives, **kwargs)
    neg = head_outputs(lm, task.negatives, **kwargs)
    return HeadOutputs(pos, neg, time.perf_counter() - start)


def run_methods(
    lm: LoadedLM,
    task: CircuitTask,
    config: DiscoveryConfig,
    *,
    outputs: HeadOutputs | None = None,
    progress: bool = False,
) -> dict[str, Ranking]:
    """Every method of `config.methods` on `task`: method name -> Ranking."""
    found: dict[str, Ranking] = {}
    for group in method_groups(config.methods):
        inputs = MethodInputs(lm, task, config, frozenset(group), outputs, progress)
        found |= REGISTRY[group[0]].run(inputs)
    return {m: found[m] for m in config.methods}
