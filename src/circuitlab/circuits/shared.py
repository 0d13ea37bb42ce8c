"""What the units of one process share: the loaded model and each task's head outputs.

`circuits evaluate` and `circuits sweep` hand their units to core.executor, which runs them
in this process, in worker processes or on Ray. A unit gets its model and head outputs from
here, so a process that runs several units of one task loads and extracts once: in this
process that is exactly the cost of one shared loop, and a worker pays once per task.
"""

from __future__ import annotations

from typing import Any

from circuitlab.circuits.methods import DiscoveryConfig, HeadOutputs, extract
from circuitlab.circuits.tasks import make_task
from circuitlab.core.lm import LoadedLM, load_lm, torch_dtype

_models: dict[tuple[str, str], LoadedLM] = {}
_tasks: dict[tuple[Any, ...], Any] = {}
_outputs: dict[tuple[Any, ...], HeadOutputs] = {}


def load_causal_lm(model: str, dtype: str = "float32") -> LoadedLM:
    """The causal LM `model` (as core.lm.load_lm reads it) with weights in `dtype` (a name)."""
    return load_lm(model, dtype=torch_dtype(dtype))


def model(name: str, dtype: str) -> LoadedLM:
    key = (name, dtype)
    if key not in _models:
        _models.clear()  # one model at a time: a worker may outlive a sweep
        _tasks.clear()
        _outputs.clear()
        _models[key] = load_causal_lm(name, dtype)
    return _models[key]


def task(lm: LoadedLM, name: str, num: int, seed: int = 0) -> Any:
    key = (name, num, seed)
    if key not in _tasks:
        _tasks[key] = make_task(name, lm.tokenizer, n=num, seed=seed)
    return _tasks[key]


def outputs(lm: LoadedLM, task_key: tuple[str, int, int], config: DiscoveryConfig) -> HeadOutputs:
    """The head outputs of the task `task_key` (name, num, seed) as `config` reads them."""
    key = (*task_key, config.reduction, config.batch_size, config.prepend_bos)
    if key not in _outputs:
        _outputs[key] = extract(lm, task(lm, *task_key), config)
    return _outputs[key]
