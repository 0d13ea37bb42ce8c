"""Evaluation speed: greedy decoding with the key/value cache vs the official pattern.

The official evaluation (github.com/guyuntian/CoT_benchmark, model.py `GPT.generate`, used
by arithmetic/eval.py and equation/eval.py) keeps every test sequence padded to the
dataset maximum and, for each generated token, runs the whole model over the whole padded
batch, then writes the argmax at each row's current position; it stops when every row has
just written `<eos>` or a row reaches the end of the buffer. circuitlab groups prompts of
equal length and decodes with a key/value cache, one new position per token
(`cot.model.greedy_generate`, what `cot eval` runs).

Both run the same model (the official size, `arch = official`, random weights) on the
same CoT test problems, in alternating rounds of one process. Random weights rarely write
`<eos>`, so both decode to their length limit: the official loop to the end of its buffer,
circuitlab to the longest reference continuation plus 8. Reported: problems per second and
generated tokens per second for each, and their ratio.

    python benchmarks/bench_cot_eval.py [--problems 128 --rounds 2 --threads 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from circuitlab.cot.model import GPT, greedy_generate
from circuitlab.cot.sequences import Sequences
from circuitlab.cot.tasks.common import EOS_ID
from circuitlab.cot.train import TrainConfig, prepare


@torch.no_grad()
def official_pattern(model: GPT, test: Sequences, batch_size: int) -> int:
    """The official generate loop over padded batches; returns tokens written."""
    written = 0
    width = model.config.max_len
    for lo in range(0, len(test), batch_size):
        rows = slice(lo, lo + batch_size)
        idx = torch.zeros(len(test.ids[rows]), width, dtype=torch.long)
        prompts = test.prompt[rows]
        for r, plen in enumerate(prompts):
            idx[r, :plen] = torch.as_tensor(test.ids[rows][r, :plen])
        at = torch.as_tensor(prompts - 1, dtype=torch.long)  # the separator's position
        arange = torch.arange(idx.shape[0])
        while True:
            logits, _ = model(idx)
            new = logits.argmax(dim=2)[arange, at]
            idx[arange, at + 1] = new
            written += idx.shape[0]
            if bool((new == EOS_ID).all()) or bool((at == width - 2).any()):
                break
            at[new != EOS_ID] += 1
    return written


@torch.no_grad()
def cached(model: GPT, test: Sequences, batch_size: int) -> int:
    """`cot eval`'s decoding: equal-length prompts batched, one cached position a token."""
    written = 0
    max_new = int((test.lengths - test.prompt).max()) + 8
    for plen in np.unique(test.prompt):
        rows = np.flatnonzero(test.prompt == plen)
        for lo in range(0, len(rows), batch_size):
            prompts = torch.as_tensor(test.ids[rows[lo : lo + batch_size], :plen])
            written += greedy_generate(model, prompts, max_new, EOS_ID).numel()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=128, help="test problems per task")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| test set | pattern | problems/s | generated tokens/s | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for task, size in (("arithmetic", 4), ("lis", 50)):
        config = TrainConfig(task=task, size=size, format="cot", num=args.problems,
                             test_num=args.problems, d_model=256, heads=4, layers=3,
                             recipe="official")  # fmt: skip
        prepared = prepare(config)
        torch.manual_seed(0)
        model = GPT(prepared.model_config).eval()
        seconds = {"official pattern": 0.0, "cached (circuitlab)": 0.0}
        tokens = dict.fromkeys(seconds, 0)
        for _ in range(args.rounds):
            for name, run in (("official pattern", official_pattern),
                              ("cached (circuitlab)", cached)):  # fmt: skip
                start = time.perf_counter()
                tokens[name] += run(model, prepared.test, args.batch_size)
                seconds[name] += time.perf_counter() - start
        n = len(prepared.test) * args.rounds
        base = n / seconds["official pattern"]
        for name in seconds:
            rate = n / seconds[name]
            print(f"| {task} n={size} CoT ({len(prepared.test)}) | {name} | {rate:.1f} | "
                  f"{tokens[name] / seconds[name]:,.0f} | {rate / base:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
