"""Robustness of the SAE method, as in the paper: one setting varied at a time.

Around the defaults (10 training prompts, 200 features, the task's lambda, mean over
positions), each of these is varied alone: the number of SAE training prompts, the number
of features, lambda, the position reduction and the node score (`count`, the paper's, or
`null-z`, against label shuffles: `sae_method.null_scores`). Every point is the node (and
edge) ROC AUC against one reference, mean and std over seeds. Head outputs are extracted once per
reduction; every (setting, value, seed) is saved as it finishes, so a rerun resumes.
`circuitlab circuits sweep` writes results.json, report.md and sweep.png (one panel each).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.circuits import shared
from circuitlab.circuits.heads import REDUCTIONS
from circuitlab.circuits.methods import DiscoveryConfig
from circuitlab.circuits.references import check_reference, circuit_metrics, load_reference
from circuitlab.circuits.sae_method import NODE_SCORES, sae_discover
from circuitlab.core.config import comma_list, config_to_dict, option, option_of, require
from circuitlab.core.executor import Execution, Unit, identity
from circuitlab.core.io import atomic_write_bytes, atomic_write_json, read_json
from circuitlab.core.runs import RunDir
from circuitlab.core.sites import find_sites
from circuitlab.core.threads import torch_threads


@dataclass(frozen=True)
class SweepConfig(Execution):
    """One SAE setting varies at a time around DiscoveryConfig's (whose help and flags the
    shared settings use). Each (setting, value, seed) is a unit of core.executor."""

    task: str = option_of(DiscoveryConfig, "task")
    reference: str = option("", "The circuit to score against (as in discover) \\[required].")
    model: str = option_of(DiscoveryConfig, "model")
    num: int = option_of(DiscoveryConfig, "num")
    seeds: int = option(3, "Seeds per point.")
    n_train: tuple[int, ...] = option(
        (5, 10, 25, 50, 100, 250), "SAE training prompts to try.", parse=comma_list(int)
    )
    n_features: tuple[int, ...] = option(
        (50, 100, 200, 400), "SAE feature counts to try.", flags=("--features",),
        parse=comma_list(int),
    )  # fmt: skip
    l1: tuple[float, ...] = option(
        (0.005, 0.01, 0.02, 0.05, 0.1), "L1 coefficients to try.", parse=comma_list(float)
    )
    reductions: tuple[str, ...] = option(
        ("mean", "last"), "Position reductions to try.", parse=comma_list()
    )
    node_scores: tuple[str, ...] = option(
        NODE_SCORES, "SAE node scores to try (see discover --node-score).", parse=comma_list()
    )
    null_permutations: int = option_of(DiscoveryConfig, "null_permutations")
    epochs: int = option_of(DiscoveryConfig, "epochs")
    sae_dtype: str = option_of(DiscoveryConfig, "sae_dtype")
    dtype: str = option_of(DiscoveryConfig, "dtype")
    threads: int = option_of(DiscoveryConfig, "threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.reference), "the sweep needs a --reference circuit to score against")
        require(self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}")
        require(all(n >= 1 for n in self.n_train), "n_train values must be >= 1")
        require(
            all(n <= 2 * self.num for n in self.n_train),
            f"n_train values must be <= {2 * self.num} (the pooled prompts)",
        )
        require(all(f >= 2 for f in self.n_features), "n_features values must be >= 2")
        require(all(v >= 0 for v in self.l1), "l1 values must be >= 0")
        bad = [r for r in self.reductions if r not in REDUCTIONS]
        require(not bad, f"unknown reduction(s) {bad}: use {', '.join(REDUCTIONS)}")
        bad = [v for v in self.node_scores if v not in NODE_SCORES]
        require(not bad, f"unknown node score(s) {bad}: use {', '.join(NODE_SCORES)}")

    def base(self) -> DiscoveryConfig:
        return DiscoveryConfig(
            task=self.task,
            model=self.model,
            num=self.num,
            methods=("sae", "sae-edge"),
            epochs=self.epochs,
            null_permutations=self.null_permutations,
            sae_dtype=self.sae_dtype,
            dtype=self.dtype,
        )

    def points(self) -> list[tuple[str, Any, DiscoveryConfig]]:
        base = self.base()
        out: list[tuple[str, Any, DiscoveryConfig]] = []
        out += [("n_train", v, replace(base, n_train=v)) for v in self.n_train]
        out += [("n_features", v, replace(base, n_features=v)) for v in self.n_features]
        out += [("l1", v, replace(base, l1=v)) for v in self.l1]
        out += [("reduction", v, replace(base, reduction=v)) for v in self.reductions]
        out += [("node_score", v, replace(base, node_score=v)) for v in self.node_scores]
        return out


def run_sweep(config: SweepConfig, out: str | Path) -> dict[str, Any]:
    check_reference(config.reference)  # before the run directory is written
    run = RunDir.open(out, identity(config))
    points = config.points()
    units = [
        Unit(f"{param}={value} seed {seed}", _sweep_unit, (config, str(run.path), index, seed))
        for index, (param, value, _) in enumerate(points)
        for seed in range(config.seeds)
    ]
    with torch_threads(config.threads if config.workers == 1 else 0):
        config.run(units, title="circuits sweep")
    rows = []
    for param, value, _ in points:
        records = [
            read_json(run.path / "units" / f"{param}-{value}-s{s}.json")
            for s in range(config.seeds)
        ]
        row: dict[str, Any] = {"setting": param, "value": value}
        for key in ("node", "edge", "seconds"):
            values = np.array([r[key] for r in records])
            row[key] = round(float(values.mean()), 4)
            row[f"{key}_std"] = round(float(values.std()), 4)
        rows.append(row)
    results = {"settings": config_to_dict(config), "rows": rows}
    run.write_results(results)
    _plot(run.path / "sweep.png", rows, config)
    run.write_report(_report(results))
    return results


def _sweep_unit(config: SweepConfig, out: str, index: int, seed: int, *, progress: Any) -> bool:
    """One (setting, value, seed): train the SAE on the shared head outputs, score it."""
    run = RunDir(Path(out))
    param, value, cfg = config.points()[index]
    unit = f"{param}-{value}-s{seed}"
    progress(0, 1)
    if run.is_done(unit):
        return False
    lm = shared.model(config.model, config.dtype)
    got = shared.outputs(lm, (config.task, config.num, 0), cfg)
    sites = find_sites(lm.model)
    ref = load_reference(config.reference, sites.n_layers, sites.n_heads)
    cfg = replace(cfg, seed=seed)
    result = sae_discover(
        got.positives,
        got.negatives,
        n_train=cfg.n_train,
        sae=cfg.sae_config(),
        node_score=cfg.node_score,
        permutations=cfg.null_permutations,
    )
    record = {}
    for name, ranking in (("node", result.node), ("edge", result.edge)):
        assert ranking is not None
        metrics = circuit_metrics(ranking.scores.flatten().numpy(), ref.mask.ravel(),
                                  cfg.threshold)  # fmt: skip
        record[name] = metrics["auc"]
    record["seconds"] = result.node.total_seconds  # training + scoring
    atomic_write_json(run.path / "units" / f"{unit}.json", record)
    run.mark_done(unit)
    progress(1, 1)
    return True


def _report(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# SAE robustness sweep: {s['task']} vs {s['reference']}",
        "",
        f"ROC AUC over heads, mean +- std over {s['seeds']} seeds; one setting varied at a time "
        "(others at the defaults: 10 training prompts, 200 features, the task's lambda, mean, "
        "count).",
        "",
        "| setting | value | node AUC | edge AUC | SAE seconds |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['setting']} | {r['value']} | {r['node']:.3f} +- {r['node_std']:.3f} | "
            f"{r['edge']:.3f} +- {r['edge_std']:.3f} | {r['seconds']:.1f} |"
        )
    return "\n".join([*lines, "", "Plot: sweep.png", ""])


def _plot(path: Path, rows: list[dict[str, Any]], config: SweepConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.4), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        part = [r for r in rows if r["setting"] == setting]
        labels = [str(r["value"]) for r in part]
        x = np.arange(len(part))
        for key, marker in (("node", "o"), ("edge", "s")):
            ax.errorbar(
                x,
                [r[key] for r in part],
                yerr=[r[f"{key}_std"] for r in part],
                marker=marker,
                capsize=3,
                label=key,
            )
        ax.set_xticks(x, labels)
        ax.set_xlabel(setting)
        ax.set_ylim(0.3, 1.0)
        ax.axhline(0.5, ls=":", c="grey")
        ax.set_ylabel("ROC AUC")
        ax.legend(fontsize=7)
    fig.suptitle(f"SAE method on {config.task}: robustness ({config.seeds} seeds)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
