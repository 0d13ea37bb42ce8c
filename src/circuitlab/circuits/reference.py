"""A patching reference circuit for any model: the heads whose ablation moves the task metric.

For every head, the task metric over the positive prompts is measured with that head ablated
(mean over the negatives by default; resample and zero on request). A head's effect is
    effect(h) = mean metric clean - mean metric with h ablated,
and its relative effect is effect(h) / (mean metric on positives - mean metric on negatives),
the share of the clean-vs-corrupted gap that knocking out h alone destroys (negative when the
head works against the task, like IOI's negative name movers). The reference circuit is the
heads with |relative effect| >= threshold (default 0.05, i.e. 5% of the gap). Because that
choice is arbitrary, reference.json also carries a sensitivity table: circuit size and
overlap with the default circuit for every ablation type run and several thresholds.

Work is saved per (ablation, prompt batch) in the run directory, so an interrupted run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitlab.circuits.ablation import ABLATIONS, encode_pairs, mean_z
from circuitlab.circuits.metrics import TokenSets, score_task, token_sets
from circuitlab.circuits.options import MODEL_HELP, TASK_HELP, kinds, layer_list
from circuitlab.circuits.patching import ablated_metrics, residual_inputs
from circuitlab.circuits.tasks import CircuitTask, make_task
from circuitlab.circuits.tokens import Encoded, batches, encode
from circuitlab.core.config import config_to_dict, option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_json, read_json
from circuitlab.core.lm import LoadedLM, load_lm, torch_dtype
from circuitlab.core.plotting import save_heatmaps
from circuitlab.core.progress import progress_bar
from circuitlab.core.runs import RunDir
from circuitlab.core.sites import Sites, find_sites
from circuitlab.core.threads import torch_threads

DTYPES = ("float32", "bfloat16")  # model weights; core.lm.torch_dtype maps the names


@dataclass(frozen=True)
class ReferenceConfig:
    """Settings of one patching reference run (the defaults are the documented ones)."""

    task: str = option("ioi", TASK_HELP)
    model: str = option("embedded", MODEL_HELP)
    # 250 prompt pairs is the paper's task size but ~4x the time
    num: int = option(64, "Prompt pairs (the effect of a head is averaged over them).")
    seed: int = option(0, "Seed of the prompt generator.")
    ablation: str = option("mean", f"Ablation defining the circuit: {', '.join(ABLATIONS)}.")
    compare: tuple[str, ...] = option(
        (),
        "More ablations for the sensitivity table, comma-separated (e.g. resample,zero).",
        parse=kinds,
    )
    threshold: float = option(
        0.05,
        "A head is in the circuit if |its effect| >= this share of the clean-corrupted gap.",
    )
    thresholds: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)
    batch_size: int = option(16, "Prompts per pass (stacked once per head of a layer).")
    prepend_bos: bool = option(False, "Put the tokenizer's BOS token first.")
    dtype: str = option("float32", "float32, or bfloat16 (faster on CPUs with bf16).")
    layers: tuple[int, ...] = option(
        (), "Only patch these layers, e.g. 20-29 or 0,5,9 \\[default: all].", parse=layer_list
    )
    threads: int = option(
        0,
        "Torch CPU threads (0: default). On a CPU shared with other jobs 1 can be "
        "several times faster than 2.",
    )

    def __post_init__(self) -> None:
        require(self.num >= 1, f"num must be at least 1, got {self.num}")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        for kind in (self.ablation, *self.compare):
            require(kind in ABLATIONS, f"unknown ablation {kind!r}: use {', '.join(ABLATIONS)}")
        require(0 < self.threshold < 1, f"threshold must be in (0, 1), got {self.threshold}")
        require(all(0 < t < 1 for t in self.thresholds), "thresholds must be in (0, 1)")
        require(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}")
        require(all(layer >= 0 for layer in self.layers), "layers must be non-negative")
        require(self.threads >= 0, f"threads must be >= 0, got {self.threads}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.ablation, *self.compare)))


@dataclass(frozen=True)
class HeadEffects:
    """Per-prompt metrics with each head ablated, and what follows from them."""

    kind: str
    clean: torch.Tensor  # [n] metric on positives
    corrupted: torch.Tensor  # [n] metric on negatives
    ablated: torch.Tensor  # [n, n_layers, n_heads]

    @property
    def gap(self) -> float:
        return float(self.clean.mean() - self.corrupted.mean())

    @property
    def effect(self) -> torch.Tensor:
        """[n_layers, n_heads]: how much ablating each head lowers the mean metric."""
        return self.clean.mean() - self.ablated.mean(0)

    @property
    def relative(self) -> torch.Tensor:
        return self.effect / self.gap

    @property
    def stderr(self) -> torch.Tensor:
        """Standard error of `effect` over prompts (paired differences), [n_layers, n_heads]."""
        diffs = self.clean[:, None, None] - self.ablated
        n = diffs.shape[0]
        return diffs.std(0) / n**0.5 if n > 1 else torch.zeros_like(diffs[0])

    def circuit(self, threshold: float) -> list[tuple[int, int]]:
        """Heads with |relative effect| >= threshold, largest first."""
        rel = self.relative
        picked = [(int(layer), int(head)) for layer, head in torch.nonzero(rel.abs() >= threshold)]
        return sorted(picked, key=lambda lh: -abs(float(rel[lh])))


def jaccard(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def sensitivity(effects: dict[str, HeadEffects], config: ReferenceConfig) -> list[dict[str, Any]]:
    """Circuit size and agreement with the default circuit for each ablation and threshold."""
    default = effects[config.ablation].circuit(config.threshold)
    rows = []
    for kind, eff in effects.items():
        for threshold in sorted({*config.thresholds, config.threshold}):
            circuit = eff.circuit(threshold)
            rows.append(
                {
                    "ablation": kind,
                    "threshold": threshold,
                    "heads": len(circuit),
                    "jaccard_vs_default": round(jaccard(circuit, default), 3),
                    "default_heads_kept": len(set(circuit) & set(default)),
                }
            )
    return rows


def _jsonable(values: torch.Tensor) -> Any:
    """Nested lists rounded to 5 decimals; NaN (a head that was not patched) becomes null."""
    array = np.round(values.numpy().astype(np.float64), 5)
    return np.where(np.isnan(array), None, array).tolist()


def _names(heads: list[tuple[int, int]]) -> list[str]:
    return [f"{layer}.{head}" for layer, head in heads]


def run_reference(
    config: ReferenceConfig, out: str | Path, *, lm: LoadedLM | None = None
) -> dict[str, Any]:
    """Compute (or resume) a patching reference into run directory `out`; return reference.json."""
    with torch_threads(config.threads):
        return _run(config, out, lm)


def _run(config: ReferenceConfig, out: str | Path, lm: LoadedLM | None) -> dict[str, Any]:
    started = time.perf_counter()
    lm = lm or load_lm(config.model, dtype=torch_dtype(config.dtype))
    sites = find_sites(lm.model)
    bad = [layer for layer in config.layers if layer >= sites.n_layers]
    if bad:
        raise CircuitlabError(f"layers {bad} do not exist: {lm.name} has {sites.n_layers} layers")
    patched = config.layers or tuple(range(sites.n_layers))
    task = make_task(config.task, lm.tokenizer, n=config.num, seed=config.seed)
    # opened once the inputs are known good: a refused run leaves no config.json behind
    run = RunDir.open(out, config_to_dict(config))
    sets = token_sets(task)
    if "resample" in config.kinds:
        pos, neg = encode_pairs(lm, task.positives, task.negatives, prepend_bos=config.prepend_bos)
    else:
        pos = encode(lm.tokenizer, task.positives, prepend_bos=config.prepend_bos)
        neg = encode(lm.tokenizer, task.negatives, prepend_bos=config.prepend_bos)
    score = score_task(lm, task, batch_size=config.batch_size, prepend_bos=config.prepend_bos)
    mean = mean_z(lm, neg, batch_size=config.batch_size) if "mean" in config.kinds else None

    parts = list(batches(pos, config.batch_size))
    pending = [
        (b, k) for b in range(len(parts)) for k in config.kinds if not run.is_done(f"{k}-b{b:03d}")
    ]
    n_heads = len(patched) * sites.n_heads
    total = sum(len(parts[b][0]) for b, _ in pending) * n_heads
    with progress_bar(f"patching {n_heads} heads", total) as bar:
        for b, (index, sub) in enumerate(parts):
            kinds = [k for k in config.kinds if (b, k) in pending]
            if not kinds:
                continue
            _patch_batch(
                run,
                lm,
                sites,
                b,
                index,
                sub,
                neg,
                sets,
                task,
                kinds,
                mean,
                patched,
                lambda n: bar.advance(bar.task_ids[0], n),
            )
    effects = {
        k: _collect(run, k, len(parts), task, score.positives, score.negatives, sites)
        for k in config.kinds
    }
    reference = _write_outputs(
        run, config, lm, sites, task, score.summary(), effects, time.perf_counter() - started
    )
    return reference


def _patch_batch(
    run: RunDir,
    lm: LoadedLM,
    sites: Sites,
    b: int,
    index: torch.Tensor,
    sub: Encoded,
    neg: Encoded,
    sets: TokenSets,
    task: CircuitTask,
    kinds: list[str],
    mean: torch.Tensor | None,
    patched: tuple[int, ...],
    advance: Any,
) -> None:
    resid = residual_inputs(lm.model, sites, sub)
    for kind in kinds:
        t0 = time.perf_counter()
        ablated = ablated_metrics(
            lm,
            sites,
            sub,
            sets.select(index),
            task.metric,
            kind,
            mean=mean,
            corrupted=neg.select(index),
            resid=resid,
            on_pass=advance,
            layers_to_patch=patched,
        )
        atomic_write_json(
            run.path / "units" / f"{kind}-b{b:03d}.json",
            {
                "index": index.tolist(),
                "ablated": _jsonable(ablated),
            },
        )
        run.mark_done(f"{kind}-b{b:03d}")
        run.log_metrics(
            unit=f"{kind}-b{b:03d}", prompts=len(index), seconds=round(time.perf_counter() - t0, 2)
        )


def _collect(
    run: RunDir,
    kind: str,
    n_batches: int,
    task: CircuitTask,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    sites: Sites,
) -> HeadEffects:
    ablated = torch.empty(len(task), sites.n_layers, sites.n_heads)
    for b in range(n_batches):
        unit = read_json(run.path / "units" / f"{kind}-b{b:03d}.json")
        values = np.array(unit["ablated"], dtype=np.float64)  # None (unpatched) -> nan
        ablated[torch.tensor(unit["index"])] = torch.from_numpy(values).float()
    return HeadEffects(kind=kind, clean=clean, corrupted=corrupted, ablated=ablated)


def _write_outputs(
    run: RunDir,
    config: ReferenceConfig,
    lm: LoadedLM,
    sites: Sites,
    task: CircuitTask,
    score: dict[str, float],
    effects: dict[str, HeadEffects],
    seconds: float,
) -> dict[str, Any]:
    primary = effects[config.ablation]
    circuit = primary.circuit(config.threshold)
    table = sensitivity(effects, config)
    reference = {
        "model": lm.name,
        "task": task.summary(),
        "layout": {
            "n_layers": sites.n_layers,
            "n_heads": sites.n_heads,
            "n_kv_heads": sites.n_kv_heads,
            "d_model": sites.d_model,
        },
        "settings": config_to_dict(config),
        "definition": "effect(h) = mean metric clean - mean metric with h ablated (positives); "
        "relative = effect / (mean metric positives - mean metric negatives); "
        "circuit = heads with |relative| >= threshold, largest first",
        "metric": score,
        "heads": _names(circuit),
        "effects": {
            kind: {
                "relative": _jsonable(eff.relative),
                "absolute": _jsonable(eff.effect),
                "stderr": _jsonable(eff.stderr),
                "circuit": _names(eff.circuit(config.threshold)),
            }
            for kind, eff in effects.items()
        },
        "sensitivity": table,
        "seconds": round(seconds, 1),
    }
    atomic_write_json(run.path / "reference.json", reference)
    panels = [(f"{kind} ablation", eff.relative.numpy()) for kind, eff in effects.items()]
    save_heatmaps(
        run.path / "heatmap.png",
        panels,
        xlabel="head",
        ylabel="layer",
        colorbar="effect / clean-corrupted gap",
        marked=circuit,
        title=f"{lm.name}, {task.name}: per-head ablation effect (outlined: circuit, "
        f"{config.ablation} >= {config.threshold})",
    )
    run.write_results({"heads": reference["heads"], "metric": score, "seconds": seconds})
    run.write_report(_report(reference))
    return reference


def _report(ref: dict[str, Any]) -> str:
    s = ref["settings"]
    lines = [
        f"# Patching reference: {ref['task']['name']} on {ref['model']}",
        "",
        f"{s['num']} prompt pairs (seed {s['seed']}), metric {ref['task']['metric']}: "
        f"positives {ref['metric']['positives_mean']:.3f}, negatives "
        f"{ref['metric']['negatives_mean']:.3f}, gap {ref['metric']['gap']:.3f}.",
        "",
        f"Circuit ({s['ablation']} ablation, |effect| >= {s['threshold']} of the gap): "
        f"{len(ref['heads'])} heads: {', '.join(ref['heads']) or '(none)'}",
        "",
        "| ablation | threshold | heads | Jaccard vs default | default heads kept |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in ref["sensitivity"]:
        lines.append(
            f"| {row['ablation']} | {row['threshold']} | {row['heads']} | "
            f"{row['jaccard_vs_default']} | {row['default_heads_kept']} |"
        )
    lines += ["", f"Wall time {ref['seconds']} s. Heatmap: heatmap.png.", ""]
    return "\n".join(lines)
