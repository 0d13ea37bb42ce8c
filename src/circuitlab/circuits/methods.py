"""Running discovery methods side by side on one task's prompts: `circuitlab circuits discover`.

`DiscoveryConfig` holds every setting (one source of defaults). `run_methods` computes the
head outputs once and runs each requested method on the same prompts:
    sae            the SAE node method (O'Neill & Bui 2024)
    sae-edge       the SAE edge method, aggregated to heads (same SAE and codes as `sae`)
    attribution    attribution patching: one forward + backward per batch
    hisp           gradient-magnitude head importance (from the same backward pass)
    activation     single-head activation patching on `patch_num` pairs (the reference method)
    random         a seeded random ranking
`run_discover` writes scores.json, heatmap.png and report.md into a run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from circuitlab.circuits.discover import Ranking, sae_discover, timed
from circuitlab.circuits.heads import REDUCTIONS, head_outputs
from circuitlab.circuits.options import METHODS_HELP, MODEL_HELP, TASK_HELP, THREADS_HELP
from circuitlab.circuits.sae import SAE_DTYPES, SAEConfig
from circuitlab.circuits.tasks import Task, make_task
from circuitlab.core.config import config_to_dict, option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_json
from circuitlab.core.lm import LoadedLM, load_lm, torch_dtype
from circuitlab.core.plotting import save_heatmaps
from circuitlab.core.runs import RunDir
from circuitlab.core.sites import find_sites
from circuitlab.core.threads import torch_threads

METHODS = ("sae", "sae-edge", "attribution", "hisp", "activation", "random")
DEFAULT_METHODS = ("sae", "sae-edge", "attribution", "hisp", "random")
L1_BY_TASK = {"docstring": 0.05}  # the paper's lambda; 0.02 for every other task


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


def extract(lm: LoadedLM, task: Task, config: DiscoveryConfig) -> HeadOutputs:
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
    task: Task,
    config: DiscoveryConfig,
    *,
    outputs: HeadOutputs | None = None,
    progress: bool = False,
) -> dict[str, Ranking]:
    """Every method of `config.methods` on `task`: method name -> Ranking."""
    sites = find_sites(lm.model)
    found: dict[str, Ranking] = {}
    wanted = set(config.methods)
    if wanted & {"sae", "sae-edge"}:
        if outputs is None:
            outputs = extract(lm, task, config)
        result = sae_discover(
            outputs.positives,
            outputs.negatives,
            n_train=config.n_train,
            sae=config.sae_config(),
            normalised=config.normalised,
            edges="sae-edge" in wanted,
            seconds={"activations": outputs.seconds},
        )
        if "sae" in wanted:
            found["sae"] = result.node
        if result.edge is not None:
            found["sae-edge"] = result.edge
    if wanted & {"attribution", "hisp"}:
        from circuitlab.circuits.baselines.attribution import gradient_scores

        attribution, hisp = gradient_scores(
            lm,
            task,
            ablation=config.attribution_ablation,
            batch_size=max(1, config.batch_size // 2),
            prepend_bos=config.prepend_bos,
            progress=progress,
        )
        if "attribution" in wanted:
            found["attribution"] = attribution
        if "hisp" in wanted:
            found["hisp"] = hisp
    if "activation" in wanted:
        from circuitlab.circuits.baselines.activation import activation_scores

        found["activation"] = activation_scores(
            lm,
            task,
            num=config.patch_num,
            ablation=config.patch_ablation,
            prepend_bos=config.prepend_bos,
            progress=progress,
        )
    if "random" in wanted:
        from circuitlab.circuits.baselines.random import random_scores

        found["random"] = random_scores(sites.n_layers, sites.n_heads, config.seed)
    return {m: found[m] for m in config.methods}


def load_model(model: str, dtype: str = "float32") -> LoadedLM:
    return load_lm(model, dtype=torch_dtype(dtype))


def run_discover(
    config: DiscoveryConfig,
    out: str | Path,
    *,
    reference: str | None = None,
    lm: LoadedLM | None = None,
) -> dict[str, Any]:
    """Discover circuits with every method of `config` into run directory `out`."""
    from circuitlab.circuits.evaluate import circuit_metrics, load_reference

    run = RunDir.open(out, {**config_to_dict(config), "reference": reference or ""})
    with torch_threads(config.threads):
        seconds: dict[str, float] = {}
        with timed(seconds, "load_model"):
            lm = lm or load_model(config.model, config.dtype)
        sites = find_sites(lm.model)
        ref = load_reference(reference, sites.n_layers, sites.n_heads) if reference else None
        task = make_task(config.task, lm.tokenizer, n=config.num, seed=config.task_seed)
        rankings = run_methods(lm, task, config, progress=True)
    results: dict[str, Any] = {
        "model": lm.name,
        "task": task.summary(),
        "settings": {**config_to_dict(config), "l1_used": config.task_l1},
        "load_model_seconds": round(seconds["load_model"], 2),
        "methods": {},
    }
    for name, ranking in rankings.items():
        entry = ranking.to_json(config.threshold)
        entry["seconds_total"] = round(ranking.total_seconds, 3)
        if ref is not None:
            entry["evaluation"] = circuit_metrics(
                ranking.scores.flatten().numpy(), ref.mask.flatten(), config.threshold
            )
        results["methods"][name] = entry
    if ref is not None:
        results["reference"] = {"name": ref.name, "heads": ref.names}
    atomic_write_json(run.path / "scores.json", results)
    panels = [(name, _scaled(r.scores)) for name, r in rankings.items()]
    save_heatmaps(
        run.path / "heatmap.png",
        panels,
        xlabel="head",
        ylabel="layer",
        colorbar="score / top score",
        marked=ref.heads
        if ref is not None
        else rankings[config.methods[0]].circuit(config.threshold),
        title=f"{lm.name}, {task.name}: head scores (outlined: "
        + (f"reference {ref.name})" if ref is not None else f"{config.methods[0]} circuit)"),
    )
    run.write_results(
        {k: v for k, v in results.items() if k != "methods"}
        | {
            "circuits": {m: e["circuit"] for m, e in results["methods"].items()},
            "seconds": {m: e["seconds_total"] for m, e in results["methods"].items()},
        }
    )
    run.write_report(_report(results))
    return results


def _scaled(scores: torch.Tensor) -> Any:
    top = float(scores.abs().max())
    return (scores / top if top > 0 else scores).numpy()


def _report(results: dict[str, Any]) -> str:
    task = results["task"]
    lines = [
        f"# Circuit discovery: {task['name']} on {results['model']}",
        "",
        f"{task['pairs']} prompt pairs. Circuit = heads scoring >= "
        f"{results['settings']['threshold']} x the top score.",
        "",
        "| method | seconds | circuit size | top 10 heads | AUC | AP | F1 |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, entry in results["methods"].items():
        ev = entry.get("evaluation", {})
        lines.append(
            f"| {name} | {entry['seconds_total']:.1f} | {len(entry['circuit'])} | "
            f"{' '.join(entry['ranking'][:10])} | {_num(ev.get('auc'))} | "
            f"{_num(ev.get('ap'))} | {_num(ev.get('f1'))} |"
        )
    if "reference" in results:
        ref = results["reference"]
        lines += ["", f"Reference: {ref['name']} ({len(ref['heads'])} heads)."]
    lines += ["", "Timings (s) per step: see scores.json `seconds`. Heatmap: heatmap.png.", ""]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "DiscoveryConfig",
    "HeadOutputs",
    "extract",
    "methods_from_text",
    "replace",
    "run_discover",
    "run_methods",
]
