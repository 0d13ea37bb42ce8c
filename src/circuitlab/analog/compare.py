"""`analog compare`: are two evaluations of the same questions really different?

Two models scored on the same questions are not two independent samples: a hard question
is hard for both. Separate Wilson intervals ignore that pairing and overlap long after a
paired test has told the models apart (the paper's KL ablation is 2.71 points), so the
comparison here works on the questions both runs answered:

- the accuracy difference B - A with a paired bootstrap 95% interval: questions are
  resampled with replacement and each resample keeps a question's two outcomes together.
  Per question the outcome difference is -1, 0 or +1, so a resample's mean depends only on
  how many +1 and -1 it drew; drawing those counts from a multinomial is the same
  distribution as drawing indices, in O(resamples) instead of O(resamples * questions);
- McNemar's exact test: under "no difference" each discordant question (right in one run,
  wrong in the other) is equally likely to favour either, so the two-sided p-value is the
  binomial tail 2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2), capped at 1; computed with
  integers, exact at any count.

Every question's outcome is already in an eval result (`mcq.predictions`: id, subfield,
level where the file has one, chosen and correct letter, verdict), which `analog eval
--out` and every `analog run` stage write, so compare reads those and nothing else.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.core.config import option, require
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_write_json, read_json
from circuitlab.core.paths import resolve_inside


@dataclass(frozen=True)
class CompareConfig:
    """How the paired interval is drawn; the same seed gives the same interval."""

    resamples: int = option(10_000, "Paired bootstrap resamples.")
    seed: int = option(0, "Bootstrap seed.")

    def __post_init__(self) -> None:
        require(self.resamples >= 1, f"resamples {self.resamples}: at least 1")


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 with none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: correctly rounded however large n is


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile 95% interval of mean(b - a) over question resamples (see module doc)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty outcome lists")
    n = len(a)
    plus = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    minus = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [plus / n, minus / n, (n - plus - minus) / n], size=resamples)
    means = (counts[:, 0] - counts[:, 1]) / n
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_block(a: Sequence[bool], b: Sequence[bool], config: CompareConfig) -> dict[str, Any]:
    """Accuracies, difference, paired interval, McNemar p and the 2x2 counts of one group."""
    n = len(a)
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    low, high = paired_bootstrap(a, b, config.resamples, config.seed)
    return {
        "n": n,
        "accuracy_a": round(sum(map(bool, a)) / n, 4),
        "accuracy_b": round(sum(map(bool, b)) / n, 4),
        "difference": round((b_only - a_only) / n, 4),
        "ci95": [round(low, 4), round(high, 4)],
        "mcnemar_p": mcnemar_exact(a_only, b_only),
        "a_only": a_only,
        "b_only": b_only,
        "both_right": both,
        "both_wrong": n - a_only - b_only - both,
    }


def _by_id(predictions: Sequence[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for p in predictions:
        key = str(p["id"])
        if key in rows:
            raise CircuitlabError(f"{name} has question id {key!r} twice; ids must be unique")
        rows[key] = p
    return rows


def _sample(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in sorted(ids)[:3])
    return shown + (", ..." if len(ids) > 3 else "")


def compare_predictions(
    a: Sequence[dict[str, Any]],
    b: Sequence[dict[str, Any]],
    config: CompareConfig | None = None,
    names: tuple[str, str] = ("run A", "run B"),
) -> dict[str, Any]:
    """Pair two runs' per-question predictions by id and compare them overall, per
    subfield and per level (when the questions have levels)."""
    config = config or CompareConfig()
    left, right = _by_id(a, names[0]), _by_id(b, names[1])
    if not left:
        raise CircuitlabError(f"{names[0]} holds no predictions")
    only_a, only_b = set(left) - set(right), set(right) - set(left)
    if only_a or only_b:
        raise CircuitlabError(
            f"{names[0]} and {names[1]} were not evaluated on the same questions: "
            f"{len(only_a)} id(s) only in A ({_sample(list(only_a))}), {len(only_b)} only in "
            f"B ({_sample(list(only_b))}); evaluate both on the same file and --limit"
        )
    ids = list(left)
    differ = [i for i in ids if left[i].get("answer") != right[i].get("answer")]
    if differ:
        raise CircuitlabError(
            f"{names[0]} and {names[1]} give question(s) {_sample(differ)} different correct "
            "letters: they were evaluated on different files"
        )

    def groups(key: str) -> dict[str, dict[str, Any]]:
        members: dict[str, list[str]] = defaultdict(list)
        for i in ids:
            value = left[i].get(key)
            if value is not None:
                members[str(value)].append(i)
        return {
            name: paired_block(
                [left[i]["correct"] for i in group], [right[i]["correct"] for i in group], config
            )
            for name, group in sorted(members.items())
        }

    overall = paired_block(
        [left[i]["correct"] for i in ids], [right[i]["correct"] for i in ids], config
    )
    return {
        "resamples": config.resamples,
        "seed": config.seed,
        **overall,
        "per_subfield": groups("subfield"),
        "per_level": groups("level"),
    }


def _is_eval_result(data: Any) -> bool:
    mcq = data.get("mcq") if isinstance(data, dict) else None
    return isinstance(mcq, dict) and isinstance(mcq.get("predictions"), list)


def find_result(run: str | Path) -> Path:
    """The eval result a RUN names: the JSON file itself, or the one eval result directly
    in a run directory or in its eval/ folder (a pipeline run holds several: name one)."""
    path = Path(run)
    if not path.exists():
        raise CircuitlabError(f"{path} does not exist; give an eval result JSON or its run folder")
    if not path.is_dir():
        return path
    found = []
    for folder in (".", "eval"):
        if not (path / folder).is_dir():
            continue
        for entry in sorted((path / folder).glob("*.json")):
            inside = resolve_inside(path, entry.relative_to(path))  # no symlink out
            try:
                data = json.loads(inside.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if _is_eval_result(data):
                found.append(inside)
    if not found:
        raise CircuitlabError(
            f"{path} holds no eval result (a JSON with mcq.predictions, as `analog eval "
            "--out` writes); give the file"
        )
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(path.resolve())) for f in found)
        raise CircuitlabError(f"{path} holds {len(found)} eval results ({names}): name one")
    return found[0]


def load_result(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """The path and content of the eval result RUN names (see find_result)."""
    path = find_result(run)
    data = read_json(path)
    if not _is_eval_result(data):
        raise CircuitlabError(
            f"{path} is not an eval result (no mcq.predictions); give the JSON that "
            "`analog eval --out` or `analog run` wrote"
        )
    return path, data


def _describe(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    mcq = data["mcq"]
    return {"path": str(path), "model": data.get("model"), "mode": mcq.get("mode"),
            "scoring": mcq.get("scoring")}  # fmt: skip


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    config: CompareConfig | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Compare the eval results RUN_A and RUN_B names; write `out` (JSON) when given,
    only once both are read and paired."""
    if out is not None and Path(out).is_dir():
        raise CircuitlabError(f"--out {out} is a directory; give a file name")
    path_a, a = load_result(run_a)
    path_b, b = load_result(run_b)
    result = {
        "a": _describe(path_a, a),
        "b": _describe(path_b, b),
        **compare_predictions(
            a["mcq"]["predictions"],
            b["mcq"]["predictions"],
            config,
            names=(str(run_a), str(run_b)),
        ),
    }
    if out is not None:
        atomic_write_json(out, result)
    return result


def vs_text(block: dict[str, Any]) -> str:
    """One cell: `+0.050 [-0.02, +0.12], p=0.31` (difference, paired CI, McNemar p)."""
    low, high = block["ci95"]
    return f"{block['difference']:+.3f} [{low:+.2f}, {high:+.2f}], p={block['mcnemar_p']:.3g}"
