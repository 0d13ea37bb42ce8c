"""`circuitlab circuits discover`: every requested method on one task, into a run directory.

`run_discover` loads the model and the task, runs the methods (`methods.run_methods`) on the
same prompts, scores each against an optional reference (`references`) and writes
scores.json, heatmap.png and report.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from circuitlab.circuits.methods import DiscoveryConfig, run_methods
from circuitlab.circuits.ranking import timed
from circuitlab.circuits.references import check_reference, circuit_metrics, load_reference
from circuitlab.circuits.shared import load_causal_lm
from circuitlab.circuits.tasks import make_task
from circuitlab.core.config import config_to_dict
from circuitlab.core.io import atomic_write_json
from circuitlab.core.lm import LoadedLM
from circuitlab.core.plotting import save_heatmaps
from circuitlab.core.runs import RunDir
from circuitlab.core.sites import find_sites
from circuitlab.core.threads import torch_threads


def run_discover(
    config: DiscoveryConfig,
    out: str | Path,
    *,
    reference: str | None = None,
    lm: LoadedLM | None = None,
) -> dict[str, Any]:
    """Discover circuits with every method of `config` into run directory `out`."""
    if reference:
        check_reference(reference)
    with torch_threads(config.threads):
        seconds: dict[str, float] = {}
        with timed(seconds, "load_model"):
            lm = lm or load_causal_lm(config.model, config.dtype)
        sites = find_sites(lm.model)
        ref = load_reference(reference, sites.n_layers, sites.n_heads) if reference else None
        task = make_task(config.task, lm.tokenizer, n=config.num, seed=config.task_seed)
        # only now that every input has been read: a refused run leaves no config.json
        # behind to refuse the corrected rerun
        run = RunDir.open(out, {**config_to_dict(config), "reference": reference or ""})
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
