"""The SAE and the SAE method: constraints, scoring rules, a planted circuit, invariances."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from circuitlab.circuits.heads import head_outputs
from circuitlab.circuits.sae import SAEConfig, discrete_codes, train_sae
from circuitlab.circuits.sae_method import (
    edge_scores,
    node_scores,
    null_scores,
    pair_scores,
    sae_discover,
    training_indices,
)
from circuitlab.circuits.tokens import pad
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM
from circuitlab.core.sites import find_sites


def test_sae_keeps_unit_norm_rows_and_learns() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=gen) * 3
    x = centres[torch.randint(0, 8, (200,), generator=gen)] + 0.05 * torch.randn(200, 16)
    trained = train_sae(x, SAEConfig(n_features=12, epochs=300, l1=0.01))
    for w in (trained.sae.W_enc, trained.sae.W_dec):
        torch.testing.assert_close(w.norm(dim=1), torch.ones(len(w)), atol=1e-5, rtol=0)
    assert trained.losses[-1] < 0.5 * trained.losses[0]
    codes = discrete_codes(trained.sae, x.view(20, 10, 16))
    assert codes.shape == (20, 10) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 12


def test_sae_training_is_seeded() -> None:
    x = torch.randn(50, 8)
    a = train_sae(x, SAEConfig(n_features=6, epochs=20, seed=3))
    b = train_sae(x, SAEConfig(n_features=6, epochs=20, seed=3))
    c = train_sae(x, SAEConfig(n_features=6, epochs=20, seed=4))
    assert torch.equal(a.sae.W_dec, b.sae.W_dec) and not torch.equal(a.sae.W_dec, c.sae.W_dec)


def test_bad_sae_settings_are_user_errors() -> None:
    with pytest.raises(CircuitlabError, match="n_features"):
        SAEConfig(n_features=1)
    with pytest.raises(CircuitlabError, match="dtype"):
        SAEConfig(dtype="int8")
    with pytest.raises(CircuitlabError, match="only 4 prompts"):
        training_indices(torch.randn(4, 3), 5, 0)


def test_node_scores_count_codes_only_on_positives() -> None:
    # one layer, two heads; head 0: positives use codes {0, 1, 2}, negatives {1} -> 2
    pos = torch.tensor([[[0, 5]], [[1, 5]], [[2, 5]]]).view(3, 1, 2)
    neg = torch.tensor([[[1, 5]], [[1, 4]]]).view(2, 1, 2)
    assert node_scores(pos, neg, 6).tolist() == [[2.0, 0.0]]
    normalised = node_scores(pos, neg, 6, normalised=True)
    torch.testing.assert_close(normalised, torch.tensor([[2 / 3, 0.0]]))


def label_and_rare_codes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [n, 1, 4] of positives and negatives on 200 codes.

    head 0 depends on the label: positives mostly code 0, negatives code 1, each with a
    sprinkle of 2 and 3 (its count |P \\ N| is at most 1 or 2). head 1 draws from all 200
    codes whatever the label: most of its codes occur once, so about half of them are
    positive-only by chance. heads 2 and 3 draw from 3 codes whatever the label.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(label: int) -> torch.Tensor:
        codes = torch.empty(n, 1, 4, dtype=torch.long)
        mixed = torch.rand(n, generator=gen) < 0.2
        codes[:, 0, 0] = torch.where(mixed, torch.randint(2, 4, (n,), generator=gen), label)
        codes[:, 0, 1] = torch.randint(0, 200, (n,), generator=gen)
        codes[:, 0, 2:] = torch.randint(0, 3, (n, 2), generator=gen)
        return codes

    return draw(0), draw(1)


def test_null_z_ranks_the_label_dependent_head_above_many_rare_codes() -> None:
    pos, neg = label_and_rare_codes(60, 0)
    counts = node_scores(pos, neg, 200).flatten()
    assert int(counts.argmax()) == 1 and counts[1] > 10 * max(counts[0], 1)  # raw: rare wins
    null = null_scores(pos, neg, 200, permutations=200, seed=0)
    z, p = null.z.flatten(), null.p.flatten()
    assert int(z.argmax()) == 0 and z[0] > 3 and abs(float(z[1])) < 3
    # at most a few shuffles put every occurrence of code 2 or 3 on positives: p near 1 / 201
    assert float(p[0]) <= 0.02 and float(p[1]) > 0.05
    assert torch.equal(null.observed, node_scores(pos, neg, 200))


def test_null_scores_are_seeded_and_exact_on_an_unshuffleable_case() -> None:
    pos, neg = label_and_rare_codes(30, 1)
    a = null_scores(pos, neg, 200, permutations=50, seed=3)
    assert torch.equal(a.z, null_scores(pos, neg, 200, permutations=50, seed=3).z)
    assert not torch.equal(a.z, null_scores(pos, neg, 200, permutations=50, seed=4).z)
    # one code everywhere: every labelling counts 0, so z is 0 and p is 1, not a division by 0
    same = torch.zeros(5, 1, 2, dtype=torch.long)
    flat = null_scores(same, same, 3, permutations=20)
    assert flat.z.tolist() == [[0.0, 0.0]] and flat.p.tolist() == [[1.0, 1.0]]
    with pytest.raises(CircuitlabError, match="permutation"):
        null_scores(same, same, 3, permutations=0)


def test_sae_method_null_z_option() -> None:
    pos, neg = synthetic_outputs(30, 0)
    config = SAEConfig(n_features=10, epochs=60)
    result = sae_discover(pos, neg, n_train=6, sae=config, node_score="null-z", permutations=50)
    assert result.node.method == "sae-node-null-z" and result.node.ranked()[0] == (1, 2)
    perm_p, perm_n = torch.randperm(30), torch.randperm(30)
    shuffled = sae_discover(pos[perm_p], neg[perm_n], n_train=6, sae=config,
                            node_score="null-z", permutations=50)  # fmt: skip
    assert torch.equal(result.node.scores, shuffled.node.scores)  # prompt order: no matter
    assert result.node.info["null"]["permutations"] == 50
    count = sae_discover(pos, neg, n_train=6, sae=config)
    assert result.node.info["null"]["count"] == count.node.scores.tolist()
    with pytest.raises(CircuitlabError, match="node score"):
        sae_discover(pos, neg, n_train=6, sae=config, node_score="zscore")


def test_null_z_settings_are_validated() -> None:
    from circuitlab.circuits.methods import DiscoveryConfig

    with pytest.raises(CircuitlabError, match="node_score"):
        DiscoveryConfig(node_score="z")
    with pytest.raises(CircuitlabError, match="null_permutations"):
        DiscoveryConfig(node_score="null-z", null_permutations=0)
    with pytest.raises(CircuitlabError, match="normalised"):
        DiscoveryConfig(node_score="null-z", normalised=True)


def test_edge_scores_count_code_pairs_only_on_positives() -> None:
    # heads 0 and 1 always agree on negatives (0,0)/(1,1) but pair crosswise on positives
    pos = torch.tensor([[0, 1, 0], [1, 0, 0]]).view(2, 1, 3)
    neg = torch.tensor([[0, 0, 0], [1, 1, 0]]).view(2, 1, 3)
    u = pair_scores(pos, neg, 2)
    assert u[0, 1] == u[1, 0] == 2 and u[0, 2] == 0 and u[1, 2] == 0
    votes = edge_scores(pos, neg, 2).flatten().tolist()
    # 3 unordered pairs, the top half (1 pair) is (0, 1): both its heads get a vote
    assert votes == [1.0, 1.0, 0.0]


def synthetic_outputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 2 layers, 3 heads, 8]: head 1.2 differs between positives and negatives."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, 3, 6, 8, generator=gen) * 2

    def draw(planted_offset: int) -> torch.Tensor:
        pick = torch.randint(0, 3, (n, 2, 3), generator=gen)
        pick[:, 1, 2] += planted_offset
        x = centres[torch.arange(2)[None, :, None], torch.arange(3)[None, None, :], pick]
        return x + 0.1 * torch.randn(n, 2, 3, 8, generator=gen)

    return draw(3), draw(0)


def test_scores_do_not_depend_on_prompt_order() -> None:
    pos, neg = synthetic_outputs(30, 0)
    config = SAEConfig(n_features=10, epochs=60)
    a = sae_discover(pos, neg, n_train=6, sae=config)
    perm_p, perm_n = torch.randperm(30), torch.randperm(30)
    b = sae_discover(pos[perm_p], neg[perm_n], n_train=6, sae=config)
    assert torch.equal(a.node.scores, b.node.scores)
    assert a.edge is not None and b.edge is not None
    assert torch.equal(a.edge.scores, b.edge.scores)
    # ... and the planted head (1.2) comes first
    assert a.node.ranked()[0] == (1, 2)


PLANTED = [(2, 1), (2, 3)]  # last layer: nothing downstream reads them


@contextmanager
def planted_circuit(lm: LoadedLM, positive: bool, seed: int) -> Iterator[None]:
    """Add to the planted heads' z one of 4 directions (positives) or a fixed one (negatives)."""
    lay = find_sites(lm.model)
    gen = torch.Generator().manual_seed(1234)
    pos_dirs = torch.randn(4, lay.head_dim, generator=gen) * 4
    neg_dir = torch.randn(1, lay.head_dim, generator=gen) * 4
    draw = torch.Generator().manual_seed(seed)

    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        z = args[0].clone().view(*args[0].shape[:-1], lay.n_heads, lay.head_dim)
        for _, head in PLANTED:
            if positive:
                pick = torch.randint(0, 4, (z.shape[0],), generator=draw)
                z[:, :, head] += pos_dirs[pick][:, None]
            else:
                z[:, :, head] += neg_dir
        return (z.view(args[0].shape), *args[1:])

    handle = lay.out_projs[2].register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_planted_heads_rank_first_on_a_tiny_model(tokenizer) -> None:
    from tiny import tiny_lm

    lm = tiny_lm("gpt2", tokenizer)
    gen = torch.Generator().manual_seed(0)
    # positives and negatives: random token sequences from one distribution
    rows = torch.randint(10, 2000, (80, 10), generator=gen).tolist()
    pos_enc, neg_enc = pad(rows[:40], 0), pad(rows[40:], 0)
    with planted_circuit(lm, True, 0):
        pos = head_outputs(lm, pos_enc, batch_size=16)
    with planted_circuit(lm, False, 0):
        neg = head_outputs(lm, neg_enc, batch_size=16)
    result = sae_discover(pos, neg, n_train=10, sae=SAEConfig(n_features=50, epochs=200))
    assert set(result.node.ranked()[:2]) == set(PLANTED), result.node.scores
    top = result.node.scores.max()
    others = [float(result.node.scores[lh]) for lh in result.node.ranked()[2:]]
    assert max(others) < float(top)
    assert set(result.node.circuit(0.9)) <= set(PLANTED)
