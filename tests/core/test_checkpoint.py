from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitlab.core.checkpoint import list_checkpoints, load_latest, save_checkpoint
from circuitlab.core.errors import CircuitlabError


def trained(steps: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(steps):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_position_and_every_generator(tmp_path: Path):
    model, optimizer = trained()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, model.state_dict(), optimizer, {"step": 7, "epoch": 1})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)

    fresh, fresh_optimizer = trained(0)
    found = load_latest(tmp_path)
    assert found is not None and found.step == 7 and found.state == {"step": 7, "epoch": 1}
    fresh.load_state_dict(found.weights)
    fresh_optimizer.load_state_dict(found.optimizer)
    found.restore_rng()
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    want, got = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert want["param_groups"] == got["param_groups"]  # betas a tuple again
    for pid, state in want["state"].items():
        for key, value in state.items():
            assert torch.equal(value, got["state"][pid][key]), (pid, key)
    # nothing in it is a pickle
    assert {p.name for p in found.path.iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json",
        "manifest.json",
    }  # fmt: skip


def test_keeps_the_newest_checkpoints_only(tmp_path: Path):
    model, optimizer = trained()
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, model.state_dict(), optimizer, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010", "step-00000015"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damage):
    model, optimizer = trained()
    save_checkpoint(tmp_path, model.state_dict(), optimizer, {"step": 5})
    latest = save_checkpoint(tmp_path, model.state_dict(), optimizer, {"step": 10})
    weights = latest / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif damage == "flip":  # same size, one byte changed: only the checksum sees it
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        (latest / "optimizer.safetensors").unlink()
    else:
        (latest / "manifest.json").write_text('{"files": ')
    with pytest.warns(UserWarning, match=r"step-00000010 .* previous intact one, step-00000005"):
        found = load_latest(tmp_path)
    assert found is not None and found.step == 5


def test_every_checkpoint_damaged_is_an_error_not_a_silent_restart(tmp_path: Path):
    model, optimizer = trained()
    path = save_checkpoint(tmp_path, model.state_dict(), optimizer, {"step": 5})
    (path / "state.json").write_text(json.dumps({"tampered": True}))
    with pytest.raises(CircuitlabError, match=r"every checkpoint .* is damaged"):
        load_latest(tmp_path)


def test_no_checkpoint_yet_is_none_without_a_warning(tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_latest(tmp_path / "nothing") is None


def test_checkpoints_from_before_manifests_are_refused_not_silently_ignored(tmp_path: Path):
    (tmp_path / "step-4").mkdir()  # what analog wrote before: no manifest
    (tmp_path / "step-4" / "state.json").write_text('{"step": 4}')
    with pytest.raises(CircuitlabError, match="older circuitlab"):
        load_latest(tmp_path)
