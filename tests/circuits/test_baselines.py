"""Baselines on tiny models: attribution patching tracks exact patching; formats agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitlab.circuits.baselines.activation import activation_scores
from circuitlab.circuits.baselines.attribution import gradient_scores
from circuitlab.circuits.baselines.random import random_scores
from circuitlab.circuits.methods import DiscoveryConfig, run_methods
from circuitlab.circuits.tasks import make_task
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM


@pytest.fixture(scope="module")
def near_linear(tokenizer) -> LoadedLM:
    """A tiny GPT-2 with small weights, where a first-order estimate should be close."""
    from tiny import tiny_model

    model = tiny_model("gpt2", len(tokenizer))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(0.35)
    return LoadedLM(model=model, tokenizer=tokenizer, name="near-linear", source="config")


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_attribution_patching_tracks_activation_patching(near_linear, tokenizer, ablation):
    task = make_task("ioi", tokenizer, n=12, seed=1)
    attribution, hisp = gradient_scores(near_linear, task, ablation=ablation, batch_size=5)
    exact = activation_scores(near_linear, task, num=12, ablation=ablation, batch_size=6)
    a, e = attribution.scores.flatten().numpy(), exact.scores.flatten().numpy()
    assert attribution.scores.shape == exact.scores.shape == (3, 4)
    assert np.corrcoef(a, e)[0, 1] > 0.9, (a, e)
    assert hisp.scores.shape == (3, 4) and bool((hisp.scores >= 0).all())


def test_every_method_gives_the_same_format(tiny: LoadedLM, tokenizer) -> None:
    task = make_task("greater-than", tokenizer, n=6)
    config = DiscoveryConfig(
        task="greater-than",
        num=6,
        methods=("sae", "sae-edge", "attribution", "hisp", "activation", "random"),
        n_train=4,
        epochs=20,
        patch_num=3,
    )
    rankings = run_methods(tiny, task, config)
    n_layers = tiny.model.config.num_hidden_layers
    for name, ranking in rankings.items():
        assert ranking.scores.shape[0] == n_layers, name
        assert torch.isfinite(ranking.scores).all(), name
        data = ranking.to_json(0.5)
        assert len(data["ranking"]) == ranking.scores.numel()
        assert set(data["circuit"]) <= set(data["ranking"]) and data["seconds"]
    assert {"activations", "sae_training", "scoring"} <= set(rankings["sae"].seconds)


def test_random_ranking_is_seeded() -> None:
    assert torch.equal(random_scores(3, 4, 1).scores, random_scores(3, 4, 1).scores)
    assert not torch.equal(random_scores(3, 4, 1).scores, random_scores(3, 4, 2).scores)


def test_bad_method_settings_are_user_errors() -> None:
    with pytest.raises(CircuitlabError, match="unknown method"):
        DiscoveryConfig(methods=("sae", "acdc"))
    with pytest.raises(CircuitlabError, match="exceeds"):
        DiscoveryConfig(num=4, n_train=9)
    with pytest.raises(CircuitlabError, match="reduction"):
        DiscoveryConfig(reduction="max")
