"""Training checkpoints in safetensors only: trainable weights, optimizer state, position.

    checkpoints/step-N/weights.safetensors    the trainable parameters (LoRA: the adapters)
    checkpoints/step-N/optimizer.safetensors  every tensor of the optimizer state
    checkpoints/step-N/state.json             step, the optimizer's non-tensor state

A checkpoint is written into a temporary directory and renamed into place, so a kill
leaves either the whole checkpoint or none; the newest `keep` are kept. Nothing is
pickled, so loading one cannot run code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuitlab.core.io import atomic_dir, read_json


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: Path, step: int, model: Any, optimizer: Any, *, keep: int, extra: dict[str, Any]
) -> Path:
    target = directory / f"step-{step}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "weights.safetensors"))
        tensors, meta = _split_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra, "optimizer": meta}))
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore weights and optimizer state in place; returns state.json (without optimizer)."""
    state = read_json(path / "state.json")
    weights = load_file(str(path / "weights.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise RuntimeError(f"checkpoint {path} has weights the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer(tensors, state.pop("optimizer")))
    return state
