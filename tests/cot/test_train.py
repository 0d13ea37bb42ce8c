from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from circuitlab.core.checkpoint import list_checkpoints
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.schedule import lr_at
from circuitlab.cot.data import generate_splits, official_under
from circuitlab.cot.train import TrainConfig, prepare, train

TINY = dict(
    task="arithmetic", size=2, format="cot", num=2000, test_num=20, layers=1, d_model=32,
    heads=2, dropout=0.1, epochs=4, batch_size=16, lr=2e-3, checkpoint_every=25,
    log_every=25, device="cpu",
)  # fmt: skip


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = sorted((run / "checkpoints").glob("step-*"))
    return load_file(ckpt / "model.safetensors")


def _tiny_cli(tmp_path: Path) -> tuple[Callable[..., list[str]], dict[str, str]]:
    """`cot train` on TINY through the real CLI: the command for a run dir, and its env."""
    (tmp_path / "tiny.toml").write_text(
        "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items())
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same float reduction order in every run

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "circuitlab", "cot", "train", "--config",
                str(tmp_path / "tiny.toml"), "--out", str(out), *extra]  # fmt: skip

    return command, env


def _kill_after(command: list[str], env: dict[str, str], checkpoints: Path, count: int) -> None:
    """Start `command` and SIGKILL it once `count` checkpoints are written."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(checkpoints)) < count:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _same_final_state(reference: Path, resumed: Path) -> None:
    want, got = final_weights(reference), final_weights(resumed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").open()]
    for kind in ("loss", "eval_official_accuracy"):  # training steps, evaluations
        steps = [r["step"] for r in rows if kind in r]
        assert steps == sorted(steps) and len(steps) == len(set(steps))  # no repeated lines


def test_resume_after_kill_reaches_the_uninterrupted_state(tmp_path: Path) -> None:
    command, env = _tiny_cli(tmp_path)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(command(reference), env=env, check=True, capture_output=True)
    _kill_after(command(killed), env, killed / "checkpoints", 1)
    assert not (killed / "results.json").exists()

    refused = subprocess.run(command(killed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(command(killed, "--resume"), env=env, check=True, capture_output=True)
    _same_final_state(reference, killed)
    timing = ("train_seconds", "eval_seconds", "tokens_per_s")
    a, b = (json.loads((r / "results.json").read_text()) for r in (reference, killed))
    assert {k: v for k, v in a.items() if k not in timing} == {
        k: v for k, v in b.items() if k not in timing
    }


def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path: Path) -> None:
    """Through the real CLI: the damaged newest checkpoint is skipped with a warning, the
    run resumes from the one before and still ends exactly where an unbroken run does."""
    command, env = _tiny_cli(tmp_path)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(command(reference), env=env, check=True, capture_output=True)
    _kill_after(command(killed), env, killed / "checkpoints", 2)
    *_, previous, latest = list_checkpoints(killed / "checkpoints")
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    # with every checkpoint damaged, resuming is a one-line error, not a silent restart
    broken = tmp_path / "broken"
    shutil.copytree(killed, broken)
    for path in list_checkpoints(broken / "checkpoints"):
        (path / "optimizer.safetensors").write_bytes(b"")
    refused = subprocess.run(command(broken, "--resume"), env=env, capture_output=True,
                             text=True)  # fmt: skip
    assert refused.returncode == 2 and "every checkpoint" in refused.stderr
    assert "Traceback" not in refused.stderr

    resumed = subprocess.run(command(killed, "--resume"), env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert f"damaged checkpoint {latest.name}" in resumed.stderr
    assert f"previous intact one, {previous.name}" in resumed.stderr
    _same_final_state(reference, killed)


def test_a_finished_run_is_not_retrained(tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "epochs": 1})
    first = train(config, tmp_path, quiet=True)
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    assert train(config, tmp_path, quiet=True) == first
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp
    with pytest.raises(CircuitlabError, match="different config"):
        train(TrainConfig(**{**TINY, "epochs": 2}), tmp_path, quiet=True)
    # a run recorded before TrainConfig had `values` (LIS number range) still reopens
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["values"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert train(config, tmp_path, quiet=True) == first


def test_each_step_trains_at_the_configured_schedules_rate(tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "num": 400, "epochs": 2, "warmup": 0.2, "log_every": 1})
    train(config, tmp_path, quiet=True)
    logged = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if "lr" in r]
    total = len(logged)
    assert total == 2 * -(-400 // 16)
    want = [lr_at(s, total, peak=2e-3, warmup=0.2, schedule="cosine") for s in range(total)]
    assert [r["lr"] for r in logged] == pytest.approx(want, rel=1e-12)
    assert max(want) == pytest.approx(2e-3) and want[-1] < want[0]


def test_mix_smaller_adds_shorter_problems_to_training_only() -> None:
    config = TrainConfig(task="arithmetic", size=3, num=600, test_num=50, mix_smaller=0.5)
    prepared = prepare(config)
    plain = prepare(TrainConfig(task="arithmetic", size=3, num=600, test_num=50))
    assert len(prepared.train) == 600
    assert prepared.train.prompt.mean() < plain.train.prompt.mean()
    assert (prepared.test.ids == plain.test.ids).all()


def test_under_draws_the_official_share_of_each_size_without_repeated_chains() -> None:
    """The official --under: int(k / (1 + 2 + 3) * num) problems of size k < 3, whole chains
    deduplicated, the rest at size 3; at p = 97 size 2 has no repeats, so its count is exact."""
    num = 3000
    config = TrainConfig(task="arithmetic", size=3, p=97, num=num, test_num=200, under=True)
    splits = generate_splits(dataclasses.replace(config.data, under=False))
    batch = official_under(splits.train, splits.test, config.data)
    counts = np.bincount(batch.step_counts(), minlength=3)  # size k has k - 1 steps
    assert len(batch) == num
    assert counts[1] == int(2 / 6 * num)
    assert 0 < counts[0] <= int(1 / 6 * num)
    assert counts[2] == num - counts[0] - counts[1]
    chains = np.concatenate([batch.question, batch.steps.reshape(num, -1), batch.answer], axis=1)
    assert len({row[row != 0].tobytes() for row in chains}) == num  # no chain twice
    test_questions = {row[row != 0].tobytes() for row in splits.test.question}
    assert not test_questions & {row[row != 0].tobytes() for row in batch.question}
    # through prepare: the training set is this one, the test split the plain run's
    prepared, plain = prepare(config), prepare(dataclasses.replace(config, under=False))
    assert len(prepared.train) == num
    assert (prepared.test.ids == plain.test.ids).all()
    assert (generate_splits(config.data).train.question == batch.question).all()


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(CircuitlabError, match="format"):
        TrainConfig(format="both")
    with pytest.raises(CircuitlabError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(CircuitlabError, match="size"):
        TrainConfig(task="lis", size=1)
    with pytest.raises(CircuitlabError, match="grad_clip"):
        TrainConfig(grad_clip=-1.0)
    with pytest.raises(CircuitlabError, match="under or mix_smaller"):
        TrainConfig(under=True, mix_smaller=0.3)


def test_grad_clip_0_is_off_and_the_model_still_learns(tmp_path: Path) -> None:
    """clip_grad_norm_ with a max norm of 0 zeroes every gradient: 0 must mean no clipping."""
    config = TrainConfig(**{**TINY, "num": 400, "epochs": 3, "log_every": 1, "grad_clip": 0.0})
    train(config, tmp_path, quiet=True)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if "lr" in r]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_tiny_model_learns_arithmetic_chain_of_thought(tmp_path: Path) -> None:
    """The headline property at test scale: 1-2 operators, >= 95% of chains fully right."""
    config = TrainConfig(
        task="arithmetic", size=2, format="cot", num=20_000, test_num=200, mix_smaller=0.3,
        layers=3, d_model=128, heads=4, dropout=0.0, epochs=7, batch_size=32, lr=1e-3,
        checkpoint_every=10_000, device="cpu",
    )  # fmt: skip
    results = train(config, tmp_path, quiet=True)
    assert results["chain_accuracy"] >= 0.95, results
    assert results["answer_accuracy"] >= results["chain_accuracy"]


def test_torchrun_data_parallel_on_cpu(tmp_path: Path) -> None:
    """Two gloo ranks split every epoch's batches; rank 0 writes one run directory."""
    (tmp_path / "tiny.toml").write_text(
        "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items())
    )
    with socket.socket() as probe:  # a free port: a fixed one collides with a parallel run
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(port)]  # fmt: skip
    train_cmd = ["-m", "circuitlab", "cot", "train", "--config", str(tmp_path / "tiny.toml"),
                 "--out", str(tmp_path / "ddp"), "--epochs", "1",
                 # torchrun's parser would take --num for its --numa-binding
                 "--train-num", str(TINY["num"])]  # fmt: skip
    cmd = launcher + train_cmd
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    single = TrainConfig(**{**TINY, "epochs": 1})
    batches = -(-single.num // single.batch_size)  # ceil: batches in one epoch
    assert results["steps"] == batches // 2  # each step consumed two batches, one per rank
    assert results["examples"] == single.test_num


def tensorboard_losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    found = [(e.step, e.value) for e in events.Scalars("loss")]
    assert len({s for s, _ in found}) == len(found), "a step shown twice"
    return dict(found)


def test_report_to_tensorboard_shows_the_losses_of_metrics_jsonl_across_a_resume(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorboard")
    tiny = {**TINY, "epochs": 1, "log_every": 5}  # 125 steps, a checkpoint every 25
    (tmp_path / "tiny.toml").write_text(
        "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in tiny.items())
    )
    out = tmp_path / "run"

    def killed_at_step_40(step: int, total: int) -> None:
        if step == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**tiny, report_to="tensorboard"), out, quiet=True,
              on_step=killed_at_step_40)  # fmt: skip
    assert max(tensorboard_losses(out)) == 40
    resumed = subprocess.run(
        [sys.executable, "-m", "circuitlab", "cot", "train", "--config",
         str(tmp_path / "tiny.toml"), "--out", str(out), "--resume", "--report-to", "tensorboard"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    want = {r["step"]: float(np.float32(r["loss"])) for r in metrics if "loss" in r}
    assert sorted(want) == [*range(5, 125, 5), 125]
    assert tensorboard_losses(out) == want  # steps 30-40 of the killed attempt are gone
    assert "report_to" not in json.loads((out / "config.json").read_text())


def test_official_recipe_sets_its_fields_and_refuses_contradictions() -> None:
    from circuitlab.cot.config import OFFICIAL_RECIPE

    config = TrainConfig(recipe="official")
    assert {k: getattr(config, k) for k in OFFICIAL_RECIPE} == OFFICIAL_RECIPE
    assert TrainConfig(recipe="official", beta2=0.999).beta2 == 0.999  # the same value: fine
    with pytest.raises(CircuitlabError, match="recipe official sets beta2"):
        TrainConfig(recipe="official", beta2=0.9)
    with pytest.raises(CircuitlabError, match="recipe official sets grad_clip"):
        TrainConfig(recipe="official", grad_clip=0.5)
    with pytest.raises(CircuitlabError, match="recipe official sets amp"):
        TrainConfig(recipe="official", amp="bf16")
    with pytest.raises(CircuitlabError, match="recipe"):
        TrainConfig(recipe="paper")


def test_official_recipe_steps_the_rate_per_epoch_and_learns(tmp_path: Path) -> None:
    """One warmup epoch at lr 0 (nothing moves), then the linear decay; the loss falls."""
    config = TrainConfig(**{**TINY, "num": 400, "epochs": 3, "warmup": 0.34, "log_every": 1,
                            "lr": 3e-3, "recipe": "official", "eval_every": 1,
                            "eval_examples": 10})  # fmt: skip
    results = train(config, tmp_path, quiet=True)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    # train and test accuracy after each epoch (the last one is the final evaluation's)
    evals = [r for r in metrics if "eval_official_accuracy" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert all(r["train_examples"] == 10 and r["eval_examples"] == 10 for r in evals[:2])
    assert evals[-1]["eval_answer_accuracy"] == results["answer_accuracy"]
    assert evals[-1]["train_official_accuracy"] == results["train_official_accuracy"]
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    rows = [r for r in metrics if "lr" in r]
    per_epoch = -(-400 // 16)
    assert len(rows) == 3 * per_epoch
    lrs = [r["lr"] for r in rows]
    assert lrs == pytest.approx([0.0] * per_epoch + [3e-3] * per_epoch + [1.5e-3] * per_epoch)
    losses = [r["loss"] for r in rows]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
