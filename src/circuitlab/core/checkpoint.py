"""Training checkpoints every trainer writes the same way: safetensors + JSON, checksummed.

    checkpoints/step-00000120/model.safetensors      the weights the caller hands over
    checkpoints/step-00000120/optimizer.safetensors  every tensor of the optimizer state
    checkpoints/step-00000120/rng.safetensors        torch's CPU (and CUDA) generator states
    checkpoints/step-00000120/state.json             the caller's position (step, epoch, ...),
                                                     the optimizer's non-tensor state and
                                                     Python's and NumPy's generator states
    checkpoints/step-00000120/manifest.json          sha256 and size of each file above

A checkpoint is written into a temporary directory and renamed into place, and the
manifest is its last file, so a kill leaves the whole checkpoint or none. What a rename
cannot rule out (a full disk, a copy cut short, a bad sector) the checksums catch: loading
verifies them and, when the newest checkpoint is damaged, warns and falls back to the
previous intact one, which costs the steps in between instead of the run. Nothing is
pickled, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_dir

MANIFEST = "manifest.json"
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


@dataclass(frozen=True)
class Checkpoint:
    """One verified checkpoint, read into memory."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # ready for `optimizer.load_state_dict`
    state: dict[str, Any]  # what the caller saved as `state`
    rng: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def restore_rng(self) -> None:
        """Put every generator back where it was when the checkpoint was written, so a
        resumed run draws the same dropout masks and shuffles as an uninterrupted one."""
        version, internal, gauss = self.rng["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = self.rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(self.rng["torch"])
        cuda = self.rng["cuda"]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def step_dir(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints whose writing finished (they have a manifest), oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    directory: Path,
    weights: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoint `state["step"]` atomically; keep the newest `keep` checkpoints."""
    step = int(state["step"])
    with atomic_dir(step_dir(directory, step)) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()},
            tmp / "model.safetensors",
        )
        tensors, meta = _split_optimizer(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        saved = {"state": dict(state), "optimizer": meta, "rng": rng_meta}
        # plain writes: the directory as a whole is renamed into place, and a file the disk
        # lost after that fails its checksum, so no per-file fsync is needed
        (tmp / "state.json").write_text(json.dumps(saved), encoding="utf-8")
        manifest = {"files": {name: _digest(tmp / name) for name in FILES}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return step_dir(directory, step)


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest intact checkpoint (None if there is none yet).

    A damaged one (a checksum that does not match, a file missing, truncated or unreadable)
    is skipped with a warning naming it and the checkpoint used instead; if every one is
    damaged, or all are in the format before checksums, that is an error, since resuming
    from nothing would silently restart the run.
    """
    found = list_checkpoints(directory)
    if not found and directory.is_dir() and any(directory.glob("step-*")):
        # only a checkpoint from before manifests has a step-N directory without one
        raise CircuitlabError(
            f"the checkpoints in {directory} were written by an older circuitlab, without "
            "checksums, and cannot be resumed; delete that directory to train again"
        )
    damaged: list[str] = []
    for path in reversed(found):
        try:
            checkpoint = load_checkpoint(path)
        except _Damaged as e:
            damaged.append(f"{path.name} ({e})")
            continue
        if damaged:
            warnings.warn(
                f"damaged checkpoint {', '.join(damaged)} in {directory}: "
                f"resuming from the previous intact one, {path.name}",
                stacklevel=2,
            )
        return checkpoint
    if damaged:
        raise CircuitlabError(
            f"every checkpoint in {directory} is damaged: {', '.join(damaged)}; "
            "delete the run directory to start again"
        )
    return None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint; raises `_Damaged` (a CircuitlabError) if it is not
    exactly what was written."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"unreadable {MANIFEST}: {e}") from None
    for name in FILES:
        if name not in files:
            raise _Damaged(f"{MANIFEST} lists no {name}")
        try:
            digest = _digest(path / name)
        except OSError as e:
            raise _Damaged(f"{name}: {e.strerror or e}") from None
        if digest != files[name]:
            raise _Damaged(f"{name} does not match its checksum")
    try:
        weights = load_file(path / "model.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
        rng = load_file(path / "rng.safetensors")
        saved = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, SafetensorError) as e:  # written so by a bug, not a kill
        raise _Damaged(f"unreadable: {e}") from None
    cuda = [rng[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in rng))]
    return Checkpoint(
        path,
        weights,
        _join_optimizer(tensors, saved["optimizer"]),
        saved["state"],
        {**saved["rng"], "torch": rng["torch"], "cuda": cuda},
    )


class _Damaged(CircuitlabError):
    """A checkpoint that is not what was written: skipped for the one before it."""


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "bytes": size}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as flat named tensors plus the JSON rest."""
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
        if "betas" in group:  # JSON made the tuple a list
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}
