"""Scoring head rankings against a reference circuit, and the method x task table.

Metrics (scikit-learn) over all heads, the reference circuit's heads being the positives:
- auc: ROC AUC of the scores; ap: average precision (area under the precision/recall curve);
- precision, recall, f1: of the circuit at the threshold (heads >= threshold x top score);
- f1_at_k: F1 of the top-k heads, k = the reference's size (threshold-free, fair across
  methods whose scores live on different scales);
- tpr_tnr_hmean: the harmonic mean of TPR and TNR at the threshold: what the SAE paper calls
  "F1". It is not precision/recall F1 and is reported under its own name.

`run_evaluate` runs every method on every (task, reference) for several seeds (the SAE's
training draw and initialisation, and the random ranking; the gradient and patching
baselines are deterministic on fixed prompts and run once), writes one table (results.json,
report.md) and ROC curves in one plot (roc.png). Work is saved per (task, method, seed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.circuits import shared
from circuitlab.circuits.discover import Ranking
from circuitlab.circuits.methods import METHODS, DiscoveryConfig, run_methods
from circuitlab.circuits.options import reference_pairs
from circuitlab.core.config import config_to_dict, option, option_of, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.executor import Execution, Unit, identity
from circuitlab.core.io import atomic_write_bytes, atomic_write_json, read_json
from circuitlab.core.runs import RunDir
from circuitlab.core.threads import torch_threads

DETERMINISTIC = ("attribution", "hisp", "activation")


@dataclass(frozen=True)
class Reference:
    name: str
    heads: tuple[tuple[int, int], ...]
    n_layers: int
    n_heads: int

    @property
    def names(self) -> list[str]:
        return [f"{layer}.{head}" for layer, head in self.heads]

    @property
    def mask(self) -> np.ndarray:
        out = np.zeros((self.n_layers, self.n_heads), dtype=bool)
        for layer, head in self.heads:
            out[layer, head] = True
        return out


def _parse_heads(items: list[Any], where: str) -> list[tuple[int, int]]:
    heads = []
    for item in items:
        try:
            layer, head = (int(x) for x in str(item).split("."))
        except ValueError:
            raise CircuitlabError(f"{where}: {item!r} is not a head (use layer.head)") from None
        heads.append((layer, head))
    return heads


def load_reference(
    spec: str, n_layers: int, n_heads: int, *, threshold: float | None = None
) -> Reference:
    """A reference circuit from a reference.json (`circuits reference`), a JSON list of
    "layer.head" names, or `literature:MODEL:TASK[:VARIANT]` (e.g. literature:gpt2:ioi).

    threshold: re-cut a reference.json at another |relative effect| (its own by default).
    """
    if spec.startswith("literature:"):
        from circuitlab.circuits.literature import literature_circuit

        parts = spec.split(":")[1:]
        if len(parts) not in (2, 3):
            raise CircuitlabError(f"bad reference {spec!r}: use literature:MODEL:TASK[:VARIANT]")
        circuit = literature_circuit(*parts)
        heads, name = list(circuit.heads), f"{circuit.model}/{circuit.task}/{circuit.variant}"
    else:
        data = read_json(spec)
        if isinstance(data, list):
            heads, name = _parse_heads(data, spec), Path(spec).name
        elif isinstance(data, dict) and "heads" in data:
            if threshold is not None:
                kind = data["settings"]["ablation"]
                rel = np.array(data["effects"][kind]["relative"], dtype=np.float64)
                picked = np.argwhere(np.abs(np.nan_to_num(rel)) >= threshold)
                heads = [(int(a), int(b)) for a, b in picked]
            else:
                heads = _parse_heads(data["heads"], spec)
            settings = data.get("settings", {})
            name = (
                f"patching reference ({settings.get('ablation', '?')} ablation, "
                f"{settings.get('num', '?')} pairs, |effect| >= "
                f"{threshold if threshold is not None else settings.get('threshold', '?')})"
            )
        else:
            raise CircuitlabError(
                f"{spec} is neither a reference.json (with 'heads') nor a list of heads"
            )
    bad = [f"{a}.{b}" for a, b in heads if not (0 <= a < n_layers and 0 <= b < n_heads)]
    if bad:
        raise CircuitlabError(
            f"reference {spec} names heads the model does not have ({n_layers} layers x "
            f"{n_heads} heads): {', '.join(bad[:5])}. Is it for another model?"
        )
    if not heads:
        raise CircuitlabError(f"reference {spec} has no heads: nothing to score against")
    if len(set(heads)) == n_layers * n_heads:
        raise CircuitlabError(f"reference {spec} contains every head: nothing to score against")
    return Reference(name, tuple(dict.fromkeys(heads)), n_layers, n_heads)


def circuit_metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """All metrics of one ranking (flat scores) against a boolean reference (flat)."""
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    require(scores.shape == truth.shape, "scores and reference differ in size")
    require(0 < truth.sum() < len(truth), "the reference must hold some heads but not all")
    top = scores.max()
    predicted = scores >= threshold * top if top > 0 else np.zeros_like(truth)
    k = int(truth.sum())
    order = np.lexsort((np.arange(len(scores)), -scores))
    top_k = np.zeros_like(truth)
    top_k[order[:k]] = True
    tpr = recall_score(truth, predicted, zero_division=0)
    tnr = float((~predicted & ~truth).sum() / (~truth).sum())
    return {
        "auc": float(roc_auc_score(truth, scores)),
        "ap": float(average_precision_score(truth, scores)),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "recall": float(tpr),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "f1_at_k": float(f1_score(truth, top_k, zero_division=0)),
        "tpr_tnr_hmean": float(2 * tpr * tnr / (tpr + tnr)) if tpr + tnr > 0 else 0.0,
        "circuit_size": int(predicted.sum()),
    }


@dataclass(frozen=True)
class EvaluateConfig(Execution):
    """Every method on every reference. The method settings are DiscoveryConfig's (their
    help and flags are defined there); `discovery` builds one run's. The units, one per
    (task, seed), run through core.executor (the Execution settings)."""

    references: tuple[tuple[str, str], ...] = option(
        (),
        "TASK=REFERENCE, repeatable (REFERENCE: reference.json, JSON list of heads, or "
        "literature:MODEL:TASK).",
        flags=("--reference",),
        parse=reference_pairs,
        repeat=True,
    )
    model: str = option_of(DiscoveryConfig, "model")
    methods: tuple[str, ...] = option_of(DiscoveryConfig, "methods", METHODS)
    seeds: int = option(10, "Seeds (SAE and random; the others are deterministic).")
    num: int = option_of(DiscoveryConfig, "num")
    task_seed: int = option_of(DiscoveryConfig, "task_seed")
    threshold: float = option_of(DiscoveryConfig, "threshold")
    reference_threshold: float = option(
        0.0, "Re-cut reference.json files at this |relative effect| (0: their own cut)."
    )
    patch_num: int = option_of(DiscoveryConfig, "patch_num")
    n_train: int = option_of(DiscoveryConfig, "n_train")
    sae_dtype: str = option_of(DiscoveryConfig, "sae_dtype")
    dtype: str = option_of(DiscoveryConfig, "dtype")
    epochs: int = option_of(DiscoveryConfig, "epochs")
    threads: int = option_of(DiscoveryConfig, "threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.references), "give at least one TASK=REFERENCE pair")
        require(self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}")
        require(0 <= self.reference_threshold < 1, "reference_threshold must be in [0, 1)")
        self.discovery(self.references[0][0], 0)  # validates the method settings

    def discovery(self, task: str, seed: int) -> DiscoveryConfig:
        return DiscoveryConfig(
            task=task,
            model=self.model,
            num=self.num,
            seed=seed,
            task_seed=self.task_seed,
            methods=self.methods,
            n_train=self.n_train,
            epochs=self.epochs,
            threshold=self.threshold,
            patch_num=self.patch_num,
            sae_dtype=self.sae_dtype,
            dtype=self.dtype,
        )


def run_evaluate(config: EvaluateConfig, out: str | Path) -> dict[str, Any]:
    run = RunDir.open(out, identity(config))
    units = [
        Unit(f"{Path(task).stem} seed {seed}", _evaluate_unit, (config, str(run.path), task, seed),
             cost=len(_unit_methods(config, seed)))
        for task, _ in config.references
        for seed in range(config.seeds)
    ]  # fmt: skip
    with torch_threads(config.threads if config.workers == 1 else 0):
        config.run(units, title="circuits evaluate")
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    curves: dict[str, dict[str, Any]] = {}
    for task_name, spec in config.references:
        shape = None
        for method, seed, unit in _task_units(config, task_name):
            data = read_json(run.path / "units" / f"{unit}.json")
            shape = shape or (len(data["scores"]), len(data["scores"][0]))
            ref = load_reference(spec, *shape, threshold=config.reference_threshold or None)
            scores = np.array(data["scores"], dtype=np.float64)
            metrics = circuit_metrics(scores.ravel(), ref.mask.ravel(), config.threshold)
            metrics["seconds"] = data["seconds_total"]
            metrics["seed"] = seed
            rows.setdefault((task_name, method), []).append(metrics)
            if seed == 0:
                info = {"reference": ref.name, "size": len(ref.heads)}
                curves.setdefault(task_name, info)
                curves[task_name][method] = (scores.ravel(), ref.mask.ravel())
    table = _table(config, rows)
    results = {
        "settings": config_to_dict(config),
        "table": table,
        "references": {t: {"name": c["reference"], "heads": c["size"]} for t, c in curves.items()},
    }
    run.write_results(results)
    _roc_plot(run.path / "roc.png", curves, table)
    run.write_report(_report(results))
    return results


def _unit_methods(config: EvaluateConfig, seed: int) -> list[str]:
    """The methods one seed runs: the deterministic ones only at seed 0."""
    return [m for m in config.methods if seed == 0 or m not in DETERMINISTIC]


def _task_units(config: EvaluateConfig, task: str) -> list[tuple[str, int, str]]:
    stem = Path(task).stem
    out = []
    for method in config.methods:
        seeds = 1 if method in DETERMINISTIC else config.seeds
        out += [(method, s, f"{stem}-{method}-s{s}") for s in range(seeds)]
    return out


def _evaluate_unit(
    config: EvaluateConfig, out: str, task_name: str, seed: int, *, progress: Any
) -> int:
    """One (task, seed): every method of that seed not yet done, each saved as it finishes
    (the SAE node and edge scores come from one SAE, so they run together)."""
    run = RunDir(Path(out))
    stem = Path(task_name).stem
    todo = [m for m in _unit_methods(config, seed) if not run.is_done(f"{stem}-{m}-s{seed}")]
    groups = [[m] for m in todo if not m.startswith("sae")]
    if any(m.startswith("sae") for m in todo):
        groups.insert(0, [m for m in todo if m.startswith("sae")])
    progress(0, len(todo))
    if not todo:
        return 0
    lm = shared.model(config.model, config.dtype)
    base = replace(config.discovery(task_name, 0), seed=seed)
    task_key = (task_name, config.num, config.task_seed)
    outputs = shared.outputs(lm, task_key, base) if groups[0][0].startswith("sae") else None
    done = 0
    for methods in groups:
        cfg = replace(base, methods=tuple(methods))
        rankings = run_methods(lm, shared.task(lm, *task_key), cfg, outputs=outputs)
        for method, ranking in rankings.items():
            _save_unit(run, f"{stem}-{method}-s{seed}", ranking)
        done += len(methods)
        progress(done, len(todo))
    return done


def _save_unit(run: RunDir, unit: str, ranking: Ranking) -> None:
    data = ranking.to_json(0.5)
    data["seconds_total"] = round(ranking.total_seconds, 3)
    atomic_write_json(run.path / "units" / f"{unit}.json", data)
    run.mark_done(unit)
    run.log_metrics(unit=unit, seconds=data["seconds_total"])


def _table(
    config: EvaluateConfig, rows: dict[tuple[str, str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    table = []
    for (task, method), runs in rows.items():
        row: dict[str, Any] = {"task": task, "method": method, "runs": len(runs)}
        for key in ("auc", "ap", "f1", "f1_at_k", "tpr_tnr_hmean", "seconds", "circuit_size"):
            values = np.array([r[key] for r in runs], dtype=np.float64)
            row[key] = round(float(values.mean()), 4)
            row[f"{key}_std"] = round(float(values.std()), 4)
        table.append(row)
    return table


# O'Neill & Bui 2024, node / edge ROC AUC over GPT-2 small's heads against the literature
# circuits (reference/sae_circuits.md): SAE, then the HISP baseline
PAPER_AUC = {
    "ioi": {"sae": (0.853, 0.840), "hisp": (0.699, 0.813)},
    "greater-than": {"sae": (0.832, 0.856), "hisp": (0.637, 0.700)},
    "docstring": {"sae": (0.915, 0.914), "hisp": (0.885, 0.813)},
}


def _report(results: dict[str, Any]) -> str:
    lines = [
        "# Circuit discovery methods against reference circuits",
        "",
        "Mean +- std over runs (SAE and random: seeds; gradient and patching baselines are "
        "deterministic on fixed prompts: 1 run). F1 and TPR/TNR hmean at threshold "
        f"{results['settings']['threshold']} x top score; F1@k: top-k heads, k = reference size.",
        "",
        "| task | method | runs | ROC AUC | AP | F1 | F1@k | TPR/TNR hmean | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["table"]:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['runs']} | {r['auc']:.3f} +- {r['auc_std']:.3f} "
            f"| {r['ap']:.3f} | {r['f1']:.3f} | {r['f1_at_k']:.3f} | {r['tpr_tnr_hmean']:.3f} "
            f"| {r['seconds']:.1f} |"
        )
    lines += ["", "References:"]
    for task, ref in results["references"].items():
        lines.append(f"- {task}: {ref['name']}, {ref['heads']} heads")
    papers = [t for t in results["references"] if t in PAPER_AUC]
    if papers:
        lines += ["", "The paper (GPT-2 small against literature circuits, not this model and "
                  "reference), ROC AUC node / edge:", ""]  # fmt: skip
        for task in papers:
            parts = ", ".join(f"{m} {n:.3f} / {e:.3f}" for m, (n, e) in PAPER_AUC[task].items())
            lines.append(f"- {task}: {parts}")
    lines += ["", "ROC curves (seed 0): roc.png", ""]
    return "\n".join(lines)


def _roc_plot(path: Path, curves: dict[str, dict[str, Any]], table: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    auc = {(r["task"], r["method"]): r["auc"] for r in table}
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.4), squeeze=False)
    for ax, (task, entry) in zip(axes[0], curves.items(), strict=True):
        for method, value in entry.items():
            if method in ("reference", "size"):
                continue
            scores, truth = value
            fpr, tpr, _ = roc_curve(truth, scores)
            ax.plot(fpr, tpr, label=f"{method} ({auc[(task, method)]:.2f})")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set_title(f"{task}\nvs {entry['reference']}", fontsize=8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
