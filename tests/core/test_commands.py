"""Options generated from a config dataclass: one default and help, one merge rule."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from circuitlab.core.commands import config_options
from circuitlab.core.config import config_from_dict, config_to_dict, nested, option, require
from circuitlab.core.errors import CircuitlabError


@dataclass(frozen=True)
class Shape:
    layers: int = option(3, "Transformer blocks.")
    width: int = option(64, "Model width.")


@dataclass(frozen=True)
class Toy:
    task: str = option(help="What to learn.")
    lr: float = option(0.001, "Peak learning rate.")
    sizes: tuple[int, ...] = option(
        (1, 2), "Sizes to try.", parse=lambda t: tuple(map(int, t.split(",")))
    )
    num: int = option(100, "Examples.", flags=("--num", "--train-num"))
    quiet: bool = option(False, "Print less.")
    shape: Shape = nested(Shape, flatten=True)  # noqa: RUF009 - a default_factory field
    hidden: int = 7  # no help: TOML only

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr must be positive")


app = typer.Typer()
seen: list[Toy] = []


@app.command()
@config_options(Toy, table="toy")
def run(config: Toy, out: Path = typer.Option(Path("o"), help="Output.")) -> None:
    seen.append(config)


def invoke(*args: str):
    seen.clear()
    return CliRunner().invoke(app, list(args), terminal_width=200)


def test_help_shows_each_default_and_help_once():
    text = invoke("--help").output
    for line in ("Transformer blocks.", "Peak learning rate.", "Sizes to try."):
        assert text.count(line) == 1
    assert "[default: 3]" in text and "[default: 0.001]" in text and "[default: 1,2]" in text
    assert "--train-num" in text and "--config" in text and "--hidden" not in text
    assert "[required]" in text


def test_flag_beats_toml_beats_default(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[toy]\ntask = "t"\nlr = 0.5\nlayers = 5\nwidth = 32\nhidden = 9\n')
    result = invoke("--config", str(toml), "--width", "16", "--train-num", "7", "--sizes", "4,5")
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.task, config.lr, config.hidden) == ("t", 0.5, 9)  # TOML over default
    assert config.shape == Shape(layers=5, width=16)  # flag over TOML, nested by name
    assert (config.num, config.sizes, config.quiet) == (7, (4, 5), False)  # flag; default
    # a flag given with the default's own value still beats the TOML
    invoke("--config", str(toml), "--lr", "0.001")
    assert seen[0].lr == 0.001
    # without --config, the dataclass defaults
    invoke("--task", "x")
    assert seen[0] == Toy(task="x")


@pytest.mark.parametrize(
    "text, message",
    [
        ('task = "t"\nlayers = "three"\n', "setting layers: expected int, got 'three'"),
        ('task = "t"\nlrr = 0.1\n', "unknown Toy setting(s) lrr"),
        ('task = "t"\nsizes = [1, "a"]\n', "setting sizes: expected int"),
        ("lr = 0.1\n", "missing --task"),
        ('task = "t"\nlr = -1.0\n', "lr must be positive"),
    ],
)
def test_bad_toml_is_a_user_error_naming_the_file(tmp_path, text, message):
    toml = tmp_path / "c.toml"
    toml.write_text(text)  # no [toy] table: the top level is read
    result = invoke("--config", str(toml))
    assert isinstance(result.exception, CircuitlabError), result.output
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)
    if "missing" not in message and "positive" not in message:
        assert str(toml) in str(result.exception)


def test_dict_form_keeps_flattened_fields_at_the_top():
    config = Toy(task="t", shape=Shape(layers=2))
    data = config_to_dict(config)
    assert data["layers"] == 2 and "shape" not in data
    assert config_from_dict(Toy, data) == config
    assert config_from_dict(Toy, {"task": "t", "lr": 1}).lr == 1.0
