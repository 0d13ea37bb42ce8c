from dataclasses import dataclass

import pytest

from circuitlab.core.config import config_from_dict, config_to_dict, load_config, require
from circuitlab.core.errors import CircuitlabError


@dataclass(frozen=True)
class Toy:
    lr: float = 0.1
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        require(self.lr > 0, f"lr {self.lr} must be positive")


def test_toml_overrides_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.5\nsizes = [3, 4]\n")
    config = load_config(Toy, path, table="train")
    assert config == Toy(lr=0.5, sizes=(3, 4))
    assert config_to_dict(config) == {"lr": 0.5, "sizes": (3, 4)}


def test_unknown_keys_and_bad_values_are_user_errors(tmp_path):
    with pytest.raises(CircuitlabError, match="unknown Toy setting"):
        config_from_dict(Toy, {"lrr": 1})
    with pytest.raises(CircuitlabError, match="must be positive"):
        config_from_dict(Toy, {"lr": -1})
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(CircuitlabError, match="not valid TOML"):
        load_config(Toy, bad)
    with pytest.raises(CircuitlabError, match="does not exist"):
        load_config(Toy, tmp_path / "missing.toml")
