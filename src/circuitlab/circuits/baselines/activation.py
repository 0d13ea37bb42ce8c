"""Activation patching of single heads: the patching reference method, run as a baseline.

Every head is ablated in turn (mean over the negatives by default, as the reference does) on
the first `num` positive prompts, and heads rank by |mean metric drop|. This is the expensive
upper bound: on the reference's own prompts and settings it reproduces the reference exactly.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from circuitlab.circuits.ablation import check_kind, encode_pairs, mean_z
from circuitlab.circuits.metrics import metric_values, prompt_logits, token_sets
from circuitlab.circuits.patching import ablated_metrics, residual_inputs
from circuitlab.circuits.ranking import Ranking, timed
from circuitlab.circuits.tasks import CircuitTask
from circuitlab.circuits.tokens import batches, encode
from circuitlab.core.lm import LoadedLM
from circuitlab.core.progress import progress_bar
from circuitlab.core.sites import find_sites


def activation_scores(
    lm: LoadedLM,
    task: CircuitTask,
    *,
    num: int = 8,
    ablation: str = "mean",
    batch_size: int = 8,
    prepend_bos: bool = False,
    progress: bool = False,
) -> Ranking:
    check_kind(ablation)
    seconds: dict[str, float] = {}
    sub_task = task.head(num)
    with timed(seconds, "patching"):
        sites = find_sites(lm.model)
        if ablation == "resample":
            pos, neg = encode_pairs(
                lm, sub_task.positives, sub_task.negatives, prepend_bos=prepend_bos
            )
        else:
            pos = encode(lm.tokenizer, sub_task.positives, prepend_bos=prepend_bos)
            neg = encode(lm.tokenizer, task.negatives, prepend_bos=prepend_bos)
        mean = mean_z(lm, neg, batch_size=32) if ablation == "mean" else None
        sets = token_sets(sub_task)
        clean = metric_values(prompt_logits(lm, pos), sets, task.metric)
        ablated = torch.empty(len(pos), sites.n_layers, sites.n_heads)
        total = len(pos) * sites.n_total_heads
        with progress_bar("activation patching", total) if progress else nullcontext() as bar:
            for index, sub in batches(pos, batch_size):
                ablated[index] = ablated_metrics(
                    lm,
                    sites,
                    sub,
                    sets.select(index),
                    task.metric,
                    ablation,
                    mean=mean,
                    corrupted=neg.select(index) if ablation == "resample" else None,
                    resid=residual_inputs(lm.model, sites, sub),
                    on_pass=(lambda n: bar.advance(bar.task_ids[0], n)) if bar else None,
                )
    effect = clean.mean() - ablated.mean(0)
    info = {"ablation": ablation, "prompts": len(pos)}
    return Ranking("activation", effect.abs(), seconds, info)
