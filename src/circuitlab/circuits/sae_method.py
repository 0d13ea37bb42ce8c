"""The SAE discovery method (O'Neill & Bui 2024): head outputs -> codes -> node and edge scores.

1. Head outputs of all positives and negatives: [n, n_layers, n_heads, d_model].
2. An SAE (`sae`) trained on the outputs of a few prompts (10 by default) drawn from the
   pooled positives and negatives. The draw depends only on the seed and the prompts' own
   head outputs (a seeded hash of each), never on their order, so scores are invariant under
   any reordering of the prompts.
3. codes[prompt, head] = argmax over SAE features of the head's output on that prompt.
4. Node score of head h: |P_h minus N_h|, the number of codes seen on positives and never on
   negatives (`normalised`: divided by |P_h union N_h|). `node_score="null-z"` scores it
   against a permutation null instead (`null_scores`): a head whose codes are many and rare
   collects positive-only codes by chance, whatever the label; the z-score of its count
   among label-shuffled counts of the same codes asks how far it exceeds that chance.
   Edge score: for each head pair, U = the number of code pairs (c1, c2) seen together on a
   positive and never on a negative; the top half of all head pairs by U (the paper's
   n_heads^2 / 2 of the n_heads^2 ordered pairs; pairs with U = 0 never count) vote for
   both of their heads, and a head scores the number of its votes.

It returns `ranking.Ranking`s, like every method registered in `methods`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from circuitlab.circuits.ranking import Ranking, timed
from circuitlab.circuits.sae import SAEConfig, discrete_codes, train_sae
from circuitlab.core.errors import CircuitlabError


def training_indices(outputs: torch.Tensor, n_train: int, seed: int) -> torch.Tensor:
    """`n_train` prompts of `outputs` [n, ...], chosen by a seeded hash of their content.

    Returned in hash order, so the SAE sees the same rows in the same order however the
    prompts were ordered (bit-for-bit the same training).
    """
    if n_train < 1:
        raise CircuitlabError(f"need at least 1 SAE training prompt, got {n_train}")
    if n_train > len(outputs):
        raise CircuitlabError(
            f"{n_train} SAE training prompts asked for, but there are only {len(outputs)} prompts"
        )
    first = outputs.reshape(len(outputs), -1)[:, : min(64, outputs[0].numel())].float()
    salt = str(seed).encode()
    keys = [hashlib.blake2b(salt + row.numpy().tobytes(), digest_size=8).digest() for row in first]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return torch.tensor(order[:n_train], dtype=torch.long)


def node_scores(
    pos_codes: torch.Tensor, neg_codes: torch.Tensor, n_codes: int, *, normalised: bool = False
) -> torch.Tensor:
    """codes [n, n_layers, n_heads] -> score per head: codes only on positives (|P \\ N|)."""
    shape = pos_codes.shape[1:]
    seen_pos = _seen(pos_codes.reshape(len(pos_codes), -1), n_codes)
    seen_neg = _seen(neg_codes.reshape(len(neg_codes), -1), n_codes)
    only_pos = (seen_pos & ~seen_neg).sum(1).float()
    if normalised:
        union = (seen_pos | seen_neg).sum(1).float()
        only_pos = only_pos / union.clamp_min(1)
    return only_pos.view(shape)


NODE_SCORES = ("count", "null-z")


@dataclass(frozen=True)
class NullScores:
    """Each head's |P \\ N| against its permutation null, [n_layers, n_heads] each."""

    z: torch.Tensor  # (observed - null mean) / null std
    p: torch.Tensor  # empirical one-sided p-value, (1 + #null >= observed) / (1 + K)
    observed: torch.Tensor  # |P \ N| itself
    permutations: int


def null_scores(
    pos_codes: torch.Tensor,
    neg_codes: torch.Tensor,
    n_codes: int,
    *,
    permutations: int = 200,
    seed: int = 0,
) -> NullScores:
    """|P \\ N| of every head against a null that shuffles which prompts are positive.

    The codes are those already computed: each of `permutations` seeded shuffles of the
    positive/negative labels (the number of positives kept) recounts |P \\ N| from them, with
    no SAE retrained. A code is positive-only exactly when all of its occurrences at a head
    fall on positives, so each shuffle is one count of codes per head over the relabelled
    positives. The observed labelling counts as one member of the null (the identity
    permutation, as in the usual (1 + b) / (1 + K) p-value), so the null std is 0 only when
    every labelling gives the same count, and then z = 0.
    """
    if permutations < 1:
        raise CircuitlabError(f"need at least 1 permutation, got {permutations}")
    shape = pos_codes.shape[1:]
    pooled = torch.cat([pos_codes, neg_codes]).reshape(len(pos_codes) + len(neg_codes), -1)
    n, n_nodes = pooled.shape
    keys = (torch.arange(n_nodes) * n_codes + pooled).long()  # [n, nodes]: (node, code) ids
    total = torch.bincount(keys.flatten(), minlength=n_nodes * n_codes)
    present = total > 0

    def count(positives: torch.Tensor) -> torch.Tensor:
        on_pos = torch.bincount(keys[positives].flatten(), minlength=n_nodes * n_codes)
        return (present & (on_pos == total)).view(n_nodes, n_codes).sum(1)

    gen = torch.Generator().manual_seed(seed)
    observed = count(torch.arange(len(pos_codes)))
    null = torch.stack(
        [observed]
        + [count(torch.randperm(n, generator=gen)[: len(pos_codes)]) for _ in range(permutations)]
    ).double()  # [1 + K, nodes]
    spread = null.std(0, unbiased=False)
    z = torch.where(spread > 0, (observed - null.mean(0)) / spread.clamp_min(1e-12), 0.0)
    p = (null >= observed).sum(0).double() / (1 + permutations)
    return NullScores(
        z.float().view(shape), p.float().view(shape), observed.float().view(shape), permutations
    )


def _seen(codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """codes [n, n_nodes] -> [n_nodes, n_codes] bool: which codes occur at each node."""
    n_nodes = codes.shape[1]
    seen = torch.zeros(n_nodes * n_codes, dtype=torch.bool)
    seen[(torch.arange(n_nodes) * n_codes + codes).flatten()] = True
    return seen.view(n_nodes, n_codes)


def pair_scores(pos_codes: torch.Tensor, neg_codes: torch.Tensor, n_codes: int) -> np.ndarray:
    """U[h1, h2]: code pairs seen together on positives and never on negatives, [N, N]."""
    pos = pos_codes.reshape(len(pos_codes), -1).numpy().astype(np.int64)
    neg = neg_codes.reshape(len(neg_codes), -1).numpy().astype(np.int64)
    n_nodes = pos.shape[1]
    out = np.zeros((n_nodes, n_nodes), dtype=np.int64)
    column = np.arange(n_nodes, dtype=np.int64) * n_codes * n_codes
    for h1 in range(n_nodes):
        pos_keys = np.unique((column + pos[:, h1 : h1 + 1] * n_codes + pos).ravel())
        neg_keys = np.unique((column + neg[:, h1 : h1 + 1] * n_codes + neg).ravel())
        only = pos_keys[~np.isin(pos_keys, neg_keys, assume_unique=True)]
        out[h1] = np.bincount(only // (n_codes * n_codes), minlength=n_nodes)
    np.fill_diagonal(out, 0)
    return out


def edge_scores(pos_codes: torch.Tensor, neg_codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Heads scored by their votes among the top half of head pairs by U (see module doc)."""
    shape = pos_codes.shape[1:]
    u = pair_scores(pos_codes, neg_codes, n_codes)
    n = u.shape[0]
    rows, cols = np.triu_indices(n, k=1)
    values = u[rows, cols]
    keep = min(len(values) // 2, int((values > 0).sum()))
    order = np.lexsort((np.arange(len(values)), -values))[:keep]
    votes = np.bincount(rows[order], minlength=n) + np.bincount(cols[order], minlength=n)
    return torch.from_numpy(votes.astype(np.float32)).view(shape)


@dataclass(frozen=True)
class SAEResult:
    node: Ranking
    edge: Ranking | None
    train_index: torch.Tensor
    mse: float
    l0: float


def sae_discover(
    pos_outputs: torch.Tensor,
    neg_outputs: torch.Tensor,
    *,
    n_train: int = 10,
    sae: SAEConfig | None = None,
    normalised: bool = False,
    node_score: str = "count",
    permutations: int = 200,
    edges: bool = True,
    seconds: dict[str, float] | None = None,
) -> SAEResult:
    """The SAE method on head outputs [n, n_layers, n_heads, d_model] of positives/negatives.

    node_score: "count" (|P \\ N|, the paper's) or "null-z" (its z-score against
    `permutations` label shuffles, `null_scores`, seeded by the SAE's seed).
    seconds: time already spent (e.g. extracting the outputs), carried into the rankings.
    """
    sae = sae or SAEConfig()
    if node_score not in NODE_SCORES:
        raise CircuitlabError(
            f"unknown node score {node_score!r}: use one of {', '.join(NODE_SCORES)}"
        )
    if pos_outputs.shape[1:] != neg_outputs.shape[1:]:
        raise CircuitlabError("positive and negative head outputs differ in shape")
    spent = dict(seconds or {})
    pooled = torch.cat([pos_outputs, neg_outputs])
    index = training_indices(pooled, n_train, sae.seed)
    d_model = pooled.shape[-1]
    with timed(spent, "sae_training"):
        trained = train_sae(pooled[index].reshape(-1, d_model), sae)
    node_time = dict(spent)
    with timed(node_time, "scoring"):
        pos_codes = discrete_codes(trained.sae, pos_outputs)
        neg_codes = discrete_codes(trained.sae, neg_outputs)
        null = None
        if node_score == "null-z":
            # the shuffles index prompts: in the hash order of their outputs, the same
            # prompts get the same shuffles however they were ordered
            null = null_scores(
                pos_codes[training_indices(pos_outputs, len(pos_outputs), sae.seed)],
                neg_codes[training_indices(neg_outputs, len(neg_outputs), sae.seed)],
                sae.n_features,
                permutations=permutations,
                seed=sae.seed,
            )
            node = null.z
        else:
            node = node_scores(pos_codes, neg_codes, sae.n_features, normalised=normalised)
    info = {
        "n_train": n_train,
        "sae": {"n_features": sae.n_features, "l1": sae.l1, "epochs": sae.epochs},
        "sae_seed": sae.seed,
        "final_mse": trained.mse,
        "final_l0": trained.l0,
        "codes_used": int(torch.cat([pos_codes.flatten(), neg_codes.flatten()]).unique().numel()),
    }
    name = "sae-node-normalised" if normalised else "sae-node"
    node_info = dict(info)
    if null is not None:
        name = "sae-node-null-z"
        node_info["null"] = {
            "permutations": null.permutations,
            "count": null.observed.tolist(),
            "p": np.round(null.p.double().numpy(), 6).tolist(),
        }
    node_rank = Ranking(name, node, node_time, node_info)
    edge_rank = None
    if edges:
        edge_time = dict(spent)
        with timed(edge_time, "scoring"):
            pos_codes = discrete_codes(trained.sae, pos_outputs)
            neg_codes = discrete_codes(trained.sae, neg_outputs)
            edge = edge_scores(pos_codes, neg_codes, sae.n_features)
        edge_rank = Ranking("sae-edge", edge, edge_time, info)
    return SAEResult(node_rank, edge_rank, index, trained.mse, trained.l0)
