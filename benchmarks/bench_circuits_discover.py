"""Wall time of SAE circuit discovery vs exhaustive activation patching on the embedded SmolLM2.

    python benchmarks/bench_circuits_discover.py [--task ioi] [--num 250] [--patch-num 8]
        [--threads 1] [--dtype float32] [--sae-dtype float32] [--epochs 500]

SAE method, end to end after the model is loaded, on `num` pairs (2 x num prompts): head
outputs of every prompt, SAE training (10 prompts x 270 heads, 500 full-batch epochs) and
node scoring (edge scoring timed separately). Activation patching (every one of the 270 heads
mean-ablated in turn, the reference method) is timed in full on the first `patch-num` pairs,
and its cost on all `num` pairs is extrapolated from the measured per-pair cost (patching
cost is linear in the number of prompts: every prompt is run once per head). Both methods'
per-pair costs are printed side by side. Results depend heavily on other load on the CPU:
say what else was running when you quote a number.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from circuitlab.circuits.baselines.activation import activation_scores
from circuitlab.circuits.methods import DiscoveryConfig, extract
from circuitlab.circuits.sae_method import sae_discover
from circuitlab.circuits.shared import load_causal_lm
from circuitlab.circuits.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--num", type=int, default=250)
    parser.add_argument("--patch-num", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sae-dtype", default="float32")
    parser.add_argument("--epochs", type=int, default=500)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DiscoveryConfig(
        task=args.task,
        num=args.num,
        epochs=args.epochs,
        dtype=args.dtype,
        sae_dtype=args.sae_dtype,
        methods=("sae", "sae-edge"),
    )
    lm = load_causal_lm("embedded", args.dtype)
    task = make_task(args.task, lm.tokenizer, n=args.num)

    outputs = extract(lm, task, config)
    result = sae_discover(
        outputs.positives,
        outputs.negatives,
        sae=config.sae_config(),
        edges=True,
        seconds={"activations": outputs.seconds},
    )
    sae_seconds = result.node.total_seconds  # extraction + training + node scoring
    assert result.edge is not None
    edge_extra = result.edge.seconds["scoring"]

    patch_lm = lm if args.dtype == "float32" else load_causal_lm("embedded", "float32")
    patch = activation_scores(patch_lm, task, num=args.patch_num, batch_size=8)
    patch_seconds = patch.seconds["patching"]
    per_pair_patch = patch_seconds / args.patch_num
    per_pair_sae = sae_seconds / args.num
    report = {
        "task": args.task,
        "pairs": args.num,
        "prompts": 2 * args.num,
        "heads": int(outputs.positives.shape[1] * outputs.positives.shape[2]),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "sae_dtype": args.sae_dtype,
        "sae_seconds": round(sae_seconds, 1),
        "sae_steps": {k: round(v, 1) for k, v in result.node.seconds.items()},
        "edge_scoring_extra_seconds": round(edge_extra, 1),
        "patching_pairs_timed": args.patch_num,
        "patching_seconds": round(patch_seconds, 1),
        "patching_seconds_per_pair": round(per_pair_patch, 2),
        "sae_seconds_per_pair": round(per_pair_sae, 3),
        "patching_all_pairs_extrapolated_seconds": round(per_pair_patch * args.num, 0),
        "speedup_same_prompts": round(per_pair_patch * args.num / sae_seconds, 1),
    }
    print(json.dumps(report, indent=2))
    print(
        f"SAE method: {sae_seconds:.1f} s for {2 * args.num} prompts x {report['heads']} heads "
        f"({report['sae_steps']}); activation patching: {per_pair_patch:.1f} s per pair "
        f"(measured on {args.patch_num}), {per_pair_patch * args.num:.0f} s for all "
        f"{args.num} pairs (extrapolated): {report['speedup_same_prompts']}x"
    )


if __name__ == "__main__":
    main()
