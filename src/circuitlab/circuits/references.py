"""Reference circuits, and scoring a ranking against one.

A reference is the set of heads a method's scores are judged by: a patching run's
reference.json (`circuits reference`, module `reference`), a JSON list of "layer.head"
names, or a circuit from the literature. Files come from users, so every way one can be
malformed is a one-line CircuitlabError naming the file and what is wrong, never a traceback.

Metrics (scikit-learn) over all heads, the reference circuit's heads being the positives:
- auc: ROC AUC of the scores; ap: average precision (area under the precision/recall curve);
- precision, recall, f1: of the circuit at the threshold (heads >= threshold x top score);
- f1_at_k: F1 of the top-k heads, k = the reference's size (threshold-free, fair across
  methods whose scores live on different scales);
- tpr_tnr_hmean: the harmonic mean of TPR and TNR at the threshold: what the SAE paper calls
  "F1". It is not precision/recall F1 and is reported under its own name.

`bootstrap_intervals` says how much an AUC or AP depends on which heads happen to be in the
model: a percentile bootstrap over heads. Resampling the prompt pairs a method saw would also
cover the method's own noise, but means rerunning the method per resample; the head bootstrap
reuses the scores, so it is cheap enough to report beside every score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.core.config import require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import read_json


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


def _parse_heads(items: Any, where: str) -> list[tuple[int, int]]:
    if not isinstance(items, list):
        raise CircuitlabError(
            f"{where}: heads must be a list of layer.head names, got {type(items).__name__}"
        )
    heads = []
    for item in items:
        try:
            if not isinstance(item, str):
                raise ValueError
            layer, head = (int(x) for x in item.split("."))
        except ValueError:
            raise CircuitlabError(
                f"{where}: {str(item)[:40]!r} is not a head (use layer.head)"
            ) from None
        heads.append((layer, head))
    return heads


def _read(spec: str) -> Any:
    try:
        return read_json(spec)
    except RecursionError:
        raise CircuitlabError(f"{spec} is nested too deeply to be a reference") from None
    except (OSError, ValueError) as e:
        raise CircuitlabError(f"cannot read reference {spec}: {e}") from None


def _field(data: dict[str, Any], path: tuple[str, ...], spec: str) -> Any:
    """data[path[0]][path[1]]..., or an error naming the missing or malformed key."""
    value: Any = data
    for depth, key in enumerate(path):
        if not isinstance(value, dict) or key not in value:
            raise CircuitlabError(
                f"{spec}: no {'.'.join(path[: depth + 1])}: re-cutting at a threshold needs "
                "the reference.json that `circuits reference` writes"
            )
        value = value[key]
    return value


def _recut(
    data: dict[str, Any], spec: str, n_layers: int, n_heads: int, threshold: float
) -> list[tuple[int, int]]:
    """The heads of a reference.json whose |relative effect| >= threshold."""
    kind = _field(data, ("settings", "ablation"), spec)
    relative = _field(data, ("effects", str(kind), "relative"), spec)
    try:
        rel = np.array(relative, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise CircuitlabError(f"{spec}: effects.{kind}.relative is not a table of numbers") from (
            None
        )
    if rel.shape != (n_layers, n_heads):
        raise CircuitlabError(
            f"{spec}: effects.{kind}.relative has shape {rel.shape}, the model has "
            f"{n_layers} layers x {n_heads} heads. Is it for another model?"
        )
    picked = np.argwhere(np.abs(np.nan_to_num(rel)) >= threshold)
    return [(int(a), int(b)) for a, b in picked]


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
        data = _read(spec)
        if isinstance(data, list):
            heads, name = _parse_heads(data, spec), Path(spec).name
        elif isinstance(data, dict) and "heads" in data:
            if threshold is not None:
                heads = _recut(data, spec, n_layers, n_heads, threshold)
            else:
                heads = _parse_heads(data["heads"], spec)
            settings = data.get("settings", {})
            if not isinstance(settings, dict):
                raise CircuitlabError(f"{spec}: settings must be an object")
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


def check_reference(spec: str) -> None:
    """Refuse a reference that cannot be read or parsed before any model is loaded or any
    run directory is written; its heads are checked against the model's shape later."""
    load_reference(spec, 2**31, 2**31)


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


BOOTSTRAP_LEVEL = 0.95


def bootstrap_intervals(
    scores: np.ndarray, truth: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals over heads of ROC AUC and AP (`bootstrap_values`)."""
    values = bootstrap_values(scores, truth, resamples=resamples, seed=seed)
    tail = 100 * (1 - BOOTSTRAP_LEVEL) / 2
    return {
        name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
        for name, v in values.items()
    }


def bootstrap_values(
    scores: np.ndarray, truth: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """ROC AUC and AP of `resamples` seeded resamples of the heads: {"auc": [B], "ap": [B]}.

    scores: [n_heads] or [runs, n_heads] (several seeds of one method); the statistic is the
    mean over runs, so one resample of the heads applies to every run alike (the interval is
    that of the table's mean, not of a single run). The reference heads and the other heads
    are resampled separately, each with replacement and at its own size (a stratified
    bootstrap): every resample then has both classes and the reference's size, so no
    resample has an undefined AUC and none is dropped.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    truth = np.asarray(truth, dtype=bool).ravel()
    require(scores.shape[1] == len(truth), "scores and reference differ in size")
    require(0 < truth.sum() < len(truth), "the reference must hold some heads but not all")
    require(resamples >= 1, f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    index = np.concatenate(
        [
            pos[rng.integers(0, len(pos), (resamples, len(pos)))],
            neg[rng.integers(0, len(neg), (resamples, len(neg)))],
        ],
        axis=1,
    )  # [B, n]: the reference heads first
    labels = np.zeros(len(truth), dtype=bool)
    labels[: len(pos)] = True
    drawn = scores[:, index]  # [runs, B, n]
    return {
        "auc": roc_auc_rows(drawn, labels).mean(0),
        "ap": average_precision_rows(drawn, labels).mean(0),
    }


def roc_auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of every row of scores [..., n] with the same labels [n] (Mann-Whitney U;
    ties count one half, as in sklearn): a thousand resamples in one vectorised pass."""
    from scipy.stats import rankdata

    n_pos = int(labels.sum())
    ranks = rankdata(scores, axis=-1)
    n_neg = scores.shape[-1] - n_pos
    u = ranks[..., labels].sum(-1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def average_precision_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision of every row of scores [..., n] with the same labels [n], as
    sklearn computes it: tied scores form one threshold, so each positive counts the
    precision at the end of its group of ties."""
    n, n_pos = scores.shape[-1], int(labels.sum())
    order = np.argsort(-scores, axis=-1, kind="stable")
    ordered = np.take_along_axis(scores, order, -1)
    hits = labels[order]
    tp = np.cumsum(hits, axis=-1)
    last = np.ones(ordered.shape, dtype=bool)
    last[..., :-1] = ordered[..., :-1] != ordered[..., 1:]
    positions = np.where(last, np.arange(n), n - 1)
    group_end = np.flip(np.minimum.accumulate(np.flip(positions, -1), -1), -1)
    precision = np.take_along_axis(tp, group_end, -1) / (group_end + 1)
    return (precision * hits).sum(-1) / n_pos
