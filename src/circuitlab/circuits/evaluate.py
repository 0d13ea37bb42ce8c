"""The method x task table: every method on every (task, reference), over several seeds.

`run_evaluate` runs every method on every (task, reference) for several seeds (the SAE's
training draw and initialisation, and the random ranking; the baselines that are
deterministic on fixed prompts run once), writes one table (results.json, report.md) and ROC
curves in one plot (roc.png). Work is saved per (task, method, seed). The metrics are
`references.circuit_metrics`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.circuits import shared
from circuitlab.circuits.methods import (
    METHODS,
    REGISTRY,
    DiscoveryConfig,
    method_groups,
    run_methods,
)
from circuitlab.circuits.options import reference_pairs
from circuitlab.circuits.ranking import Ranking
from circuitlab.circuits.references import (
    BOOTSTRAP_LEVEL,
    bootstrap_intervals,
    check_reference,
    circuit_metrics,
    load_reference,
)
from circuitlab.core.config import config_to_dict, option, option_of, require
from circuitlab.core.executor import Execution, Unit, identity
from circuitlab.core.io import atomic_write_bytes, atomic_write_json, read_json
from circuitlab.core.runs import RunDir
from circuitlab.core.threads import torch_threads


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
    node_score: str = option_of(DiscoveryConfig, "node_score")
    null_permutations: int = option_of(DiscoveryConfig, "null_permutations")
    dtype: str = option_of(DiscoveryConfig, "dtype")
    epochs: int = option_of(DiscoveryConfig, "epochs")
    threads: int = option_of(DiscoveryConfig, "threads")
    bootstrap: int = option(
        1000,
        "Resamples of the heads for the 95% intervals of AUC and AP (percentile "
        "bootstrap, seeded; 0: no intervals).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.references), "give at least one TASK=REFERENCE pair")
        require(self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}")
        require(self.bootstrap >= 0, f"bootstrap must be >= 0, got {self.bootstrap}")
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
            node_score=self.node_score,
            null_permutations=self.null_permutations,
            dtype=self.dtype,
        )


def run_evaluate(config: EvaluateConfig, out: str | Path) -> dict[str, Any]:
    for _, spec in config.references:  # before the run directory is written
        check_reference(spec)
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
    runs: dict[tuple[str, str], tuple[list[np.ndarray], np.ndarray]] = {}
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
            runs.setdefault((task_name, method), ([], ref.mask.ravel()))[0].append(scores.ravel())
            if seed == 0:
                info = {"reference": ref.name, "size": len(ref.heads)}
                curves.setdefault(task_name, info)
                curves[task_name][method] = (scores.ravel(), ref.mask.ravel())
    table = _table(config, rows)
    if config.bootstrap:
        for row in table:
            seeds, truth = runs[(row["task"], row["method"])]
            intervals = bootstrap_intervals(np.stack(seeds), truth, resamples=config.bootstrap)
            for key, (low, high) in intervals.items():
                row[f"{key}_ci"] = [round(low, 4), round(high, 4)]
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
    return [m for m in config.methods if seed == 0 or REGISTRY[m].seeded]


def _task_units(config: EvaluateConfig, task: str) -> list[tuple[str, int, str]]:
    stem = Path(task).stem
    out = []
    for method in config.methods:
        seeds = config.seeds if REGISTRY[method].seeded else 1
        out += [(method, s, f"{stem}-{method}-s{s}") for s in range(seeds)]
    return out


def _evaluate_unit(
    config: EvaluateConfig, out: str, task_name: str, seed: int, *, progress: Any
) -> int:
    """One (task, seed): every method of that seed not yet done, each saved as it finishes
    (methods that share a computation, `methods.method_groups`, run together)."""
    run = RunDir(Path(out))
    stem = Path(task_name).stem
    todo = [m for m in _unit_methods(config, seed) if not run.is_done(f"{stem}-{m}-s{seed}")]
    groups = method_groups(todo)
    progress(0, len(todo))
    if not todo:
        return 0
    lm = shared.model(config.model, config.dtype)
    base = replace(config.discovery(task_name, 0), seed=seed)
    task_key = (task_name, config.num, config.task_seed)
    needs_outputs = any(REGISTRY[m].head_outputs for m in todo)
    outputs = shared.outputs(lm, task_key, base) if needs_outputs else None
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
        *_interval_note(results),
        "",
        "| task | method | runs | ROC AUC | AP | F1 | F1@k | TPR/TNR hmean | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["table"]:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['runs']} | {r['auc']:.3f} +- {r['auc_std']:.3f}"
            f"{interval(r, 'auc')} | {r['ap']:.3f}{interval(r, 'ap')} | {r['f1']:.3f} "
            f"| {r['f1_at_k']:.3f} | {r['tpr_tnr_hmean']:.3f} "
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


def interval(row: dict[str, Any], key: str) -> str:
    """` [low, high]` of a table row's bootstrap interval for `key`, or nothing without one."""
    ci = row.get(f"{key}_ci")
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _interval_note(results: dict[str, Any]) -> list[str]:
    resamples = results["settings"]["bootstrap"]
    if not resamples:
        return []
    return [
        f"In brackets: {BOOTSTRAP_LEVEL:.0%} percentile-bootstrap interval of the mean over "
        f"runs, resampling the heads ({resamples} resamples; reference heads and the others "
        "resampled apart). It does not resample prompts: the std over seeds is separate.",
    ]


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
