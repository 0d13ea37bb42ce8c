from __future__ import annotations

import torch

from circuitlab.cot.model import GPT
from circuitlab.cot.optim import make_optimizer
from circuitlab.cot.train import TrainConfig, prepare

TINY = dict(task="arithmetic", size=2, num=50, test_num=5, layers=1, d_model=16, heads=2)


def test_official_decay_grouping_decays_layernorm_weights_not_biases() -> None:
    for decay, norm_decayed in (("all-but-biases", True), ("matrices", False)):
        config = TrainConfig(**{**TINY, "decay": decay})
        model = GPT(prepare(config).model_config)
        decayed, plain = make_optimizer(model, config, torch.device("cpu")).param_groups
        names = {id(p): n for n, p in model.named_parameters()}
        decayed_names = {names[id(p)] for p in decayed["params"]}
        assert ("ln_f.weight" in decayed_names) is norm_decayed
        assert not any(n.endswith("bias") for n in decayed_names)
        assert plain["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.01
        assert decayed["betas"] == (0.9, 0.95)


def test_the_official_recipe_reaches_adamw() -> None:
    config = TrainConfig(**{**TINY, "recipe": "official"})
    model = GPT(prepare(config).model_config)
    decayed, plain = make_optimizer(model, config, torch.device("cpu")).param_groups
    assert decayed["betas"] == (0.9, 0.999)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert {"tok.weight", "embed_norm.weight", "ln_f.weight", "head.weight"} <= decayed_names
    assert all(names[id(p)].endswith("bias") for p in plain["params"])
