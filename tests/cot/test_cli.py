"""`cot` commands through the real CLI: options come from the config dataclasses."""

import json
import subprocess
import sys
from pathlib import Path

from cli_imports import imports_torch

from circuitlab.core.executor import identity
from circuitlab.core.runs import RunDir
from circuitlab.cot.config import TrainConfig


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "circuitlab", "cot", *args],
                          capture_output=True, text=True)  # fmt: skip


def test_train_takes_flag_over_toml_over_default(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        "[train]\ntask = 'arithmetic'\nsize = 2\nnum = 40\ntest_num = 4\nlayers = 1\n"
        "d_model = 16\nheads = 2\nepochs = 1\nbatch_size = 8\ndevice = 'cpu'\nlr = 0.5\n"
    )
    out = tmp_path / "run"
    result = run("train", "--config", str(toml), "--heads", "4", "--lr", "1e-4",
                 "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = json.loads((out / "config.json").read_text())
    assert stored["heads"] == 4  # flag over TOML
    assert stored["lr"] == 1e-4  # a flag equal to the default still beats the TOML
    assert stored["d_model"] == 16 and stored["num"] == 40  # TOML over default
    assert stored["dropout"] == 0.1 and stored["seed"] == 2021  # defaults
    assert stored == identity(TrainConfig(**stored))  # report_to is not recorded


def test_bad_toml_type_is_one_line_exit_2(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nlayers = 'three'\n")
    result = run("train", "--config", str(toml), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "layers: expected int, got 'three'" in result.stderr and str(toml) in result.stderr
    assert not (tmp_path / "run").exists()


def test_data_takes_flag_over_toml_over_default(tmp_path):
    toml = tmp_path / "d.toml"
    toml.write_text("task = 'lis'\nsize = 8\nnum = 300\nvalues = 40\nseed = 5\n")
    out = tmp_path / "l.jsonl"
    result = run("data", "--config", str(toml), "--values", "20", "--out", str(out))
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "l.stats.json").read_text())
    assert stats["values"] == 20 and stats["num_train"] == 300  # flag; TOML
    assert len((tmp_path / "l.test.jsonl").read_text().splitlines()) == 30  # default num/10
    assert run("data", "--out", str(out)).returncode == 2  # task and size are required


def test_help_shows_each_default_from_the_dataclass_once():
    text = run("train", "--help").stdout
    assert "[default: 2021]" in text and "[default: 0.0001]" in text
    assert text.count("Peak AdamW learning rate.") == 1 and "--config" in text


def test_config_json_of_older_runs_still_reopens(tmp_path):
    """config.json before ModelShape was factored out: the same flat keys and values."""
    old = {
        "task": "arithmetic", "size": 4, "format": "cot", "p": 11, "values": 250,
        "num": 10000, "test_num": 1000, "data_seed": 0, "seed": 2021, "mix_smaller": 0.0,
        "layers": 3, "d_model": 256, "heads": 4, "dropout": 0.1, "positions": "sinusoidal",
        "embed_std": 1.0, "epochs": 10, "batch_size": 128, "lr": 1e-4, "weight_decay": 0.01,
        "warmup": 0.05, "schedule": "cosine", "grad_clip": 1.0, "amp": "auto",
        "device": "auto", "eval_every": 0, "eval_examples": 500, "checkpoint_every": 200,
        "log_every": 20,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(old))
    RunDir.open(tmp_path, identity(TrainConfig()), identity(TrainConfig()))
    later = {  # fields added since, at their defaults
        "under": False, "arch": "project", "batching": "length", "beta2": 0.95,
        "decay": "matrices", "lr_step": "step", "recipe": "project", "corrupt_rate": 0.0,
        "data_file": None,
    }  # fmt: skip
    assert identity(TrainConfig()) == {**old, **later}


def test_data_builds_its_options_without_importing_torch():
    assert not imports_torch("cot", "data", "--help")


def refused(result: subprocess.CompletedProcess[str], message: str, out: Path) -> None:
    """A bad input is refused before the run directory is written (no config.json that
    would refuse the corrected rerun as 'differs in ...')."""
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (out / "config.json").exists()


TINY = ["--layers", "1", "--d-model", "16", "--heads", "2", "--epochs", "1",
        "--batch-size", "8", "--test-num", "4", "--device", "cpu"]  # fmt: skip


def test_cot_train_refused_for_its_data_then_the_corrected_rerun_trains(tmp_path):
    out = tmp_path / "run"
    bad = run("train", "--task", "arithmetic", "--size", "1", "--p", "5",
              "--num", "500", *TINY, "--out", str(out))  # fmt: skip
    refused(bad, "distinct arithmetic questions", out)
    good = run("train", "--task", "arithmetic", "--size", "1", "--p", "5",
               "--num", "40", *TINY, "--out", str(out))  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert json.loads((out / "config.json").read_text())["num"] == 40


def test_cot_train_refused_for_its_device_writes_nothing(tmp_path):
    out = tmp_path / "run"
    refused(run("train", "--device", "mps", "--out", str(out)), "device 'mps'", out)


def test_eval_samples_writes_every_generation_in_the_data_token_format(tmp_path):
    out = tmp_path / "run"
    trained = run("train", "--task", "lis", "--size", "5", "--num", "40", *TINY,
                  "--out", str(out))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (out / "accuracy.png").stat().st_size > 0  # the learning curve, train vs test
    missing = tmp_path / "nowhere" / "s.jsonl"
    bad = run("eval", str(out), "--samples", str(missing))
    assert bad.returncode == 2 and "no directory" in bad.stderr and not missing.exists()
    samples = tmp_path / "samples.jsonl"
    result = run("eval", str(out), "--samples", str(samples))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    scored = json.loads((out / "eval.json").read_text())
    assert len(rows) == scored["examples"] == 4
    assert sum(r["answer_correct"] for r in rows) / 4 == scored["answer_accuracy"]
    assert sum(r["exact"] for r in rows) / 4 == scored["official_accuracy"]
    assert scored["official_metric"] == "sequence"
    for r in rows:  # tokens separated by spaces, as in `cot data` files
        assert r["generated"].split() == r["generated"].split(" ")
        if r["exact"]:  # exact also needs the <eos>, which the texts do not show
            assert r["generated"] == r["reference"]
        assert len(r["question"].split()) == 5


def test_eval_size_runs_an_alibi_model_on_longer_problems_than_trained(tmp_path):
    out, learned = tmp_path / "alibi", tmp_path / "learned"
    for path, positions in ((out, "alibi"), (learned, "learned")):
        trained = run("train", "--task", "arithmetic", "--size", "2", "--num", "40", *TINY,
                      "--positions", positions, "--out", str(path))  # fmt: skip
        assert trained.returncode == 0, trained.stderr
    result = run("eval", str(out), "--size", "4", "--test-num", "12")
    assert result.returncode == 0, result.stderr
    scored = json.loads((out / "eval-size4.json").read_text())
    assert scored["size"] == 4 and scored["trained_size"] == 2 and scored["examples"] == 12
    assert json.loads((out / "results.json").read_text())["size"] == 2  # the run's own stays
    refused = run("eval", str(learned), "--size", "4", "--test-num", "12")
    assert refused.returncode == 2 and "learned positions stop at" in refused.stderr
    assert not (learned / "eval-size4.json").exists()
