"""Scoring a trained run again: on its own test split, on fresh problems, or on longer
problems than it was trained on (length generalisation). `cot eval` and the sweep's
`eval_sizes` both come here, so both score the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuitlab.core.devices import pick_device
from circuitlab.core.io import atomic_write_json
from circuitlab.cot.config import FRESH_PROBLEMS
from circuitlab.cot.evaluate import evaluate_model
from circuitlab.cot.model import stretched
from circuitlab.cot.tasks import get_task
from circuitlab.cot.train import fresh_test, generation_budget, load_run


def eval_path(run: str | Path, size: int | None) -> Path:
    """Where a rescoring is written: eval.json, or eval-sizeM.json for size M."""
    return Path(run) / ("eval.json" if size is None else f"eval-size{size}.json")


def rescore(
    run: str | Path,
    *,
    test_num: int | None = None,
    size: int | None = None,
    device: str = "auto",
    samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score the run's latest weights and write `eval_path(run, size)`.

    size M: `test_num` (default FRESH_PROBLEMS) fresh problems of size M, the model
    stretched to their length; otherwise the run's test split, or `test_num` fresh
    problems of its size.
    """
    config, model, prepared = load_run(run)
    test = prepared.test
    if size is not None:
        test = fresh_test(config, test_num or FRESH_PROBLEMS, size)
        model = stretched(model, test.max_len + 8)  # room for a wrong, longer generation
    elif test_num is not None:
        test = fresh_test(config, test_num)
    dev = pick_device(device)
    task = get_task(config.task)
    arg = config.data.task_arg
    result = evaluate_model(model.to(dev), task, task.vocab(config.size, arg), test,
                            config.format, arg, device=dev, samples=samples,
                            max_new=generation_budget(config, model))  # fmt: skip
    payload = {"task": config.task, "size": size or config.size, "format": config.format,
               "layers": config.layers, "trained_size": config.size,
               "fresh_problems": test_num, **result.to_dict()}  # fmt: skip
    atomic_write_json(eval_path(run, size), payload)
    return payload
