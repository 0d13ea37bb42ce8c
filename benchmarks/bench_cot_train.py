"""Training throughput: circuitlab's GPT vs the official minGPT-style pattern, same data.

The official code (github.com/guyuntian/CoT_benchmark, model.py and train.py; minGPT based)
computes attention by hand (q k^T, masked_fill with a causal mask buffer, softmax, dropout,
@ v), writes GELU out as elementwise ops, and pads every sequence to one maximum length. The
baseline below follows that pattern (our own code; here padded to the dataset's maximum).
circuitlab trains on length-bucketed batches, skips the last block's projection and MLP at
question positions (they carry no loss), draws dropout masks cheaply on the CPU, and uses
fused kernels where the device has them. Both train the official model size (3 layers,
d_model 256, 4 heads, dropout 0.1) with AdamW on the same examples; throughput counts real
(non-padding) tokens per second, measured in one run. Model FLOP/s counts the full
forward and backward per real token for both (the FLOPs circuitlab skips are not credited)
and is reported as a fraction of a matmul peak measured on this machine.

    python benchmarks/bench_cot_train.py [--task arithmetic --size 4 --steps 30]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from circuitlab.cot.batching import epoch_plan
from circuitlab.cot.model import GPT, ModelConfig, sinusoidal_table
from circuitlab.cot.sequences import loss_labels
from circuitlab.cot.train import TrainConfig, prepare


class MinGPTAttention(nn.Module):
    """The minGPT pattern: explicit scores, a registered causal mask, softmax, dropout."""

    def __init__(self, d: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value = (nn.Linear(d, d) for _ in range(3))
        self.proj = nn.Linear(d, d)
        self.attn_drop, self.resid_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        mask = torch.tril(torch.ones(max_len, max_len)).view(1, 1, max_len, max_len)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        k, q, v = split(self.key(x)), split(self.query(x)), split(self.value(x))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, d)
        return self.resid_drop(self.proj(y))


class NewGELU(nn.Module):
    """minGPT's tanh-approximate GELU, written out as elementwise ops (the official model's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
        return 0.5 * x * (1.0 + torch.tanh(inner))


class MinGPTBlock(nn.Module):
    def __init__(self, d: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MinGPTAttention(d, heads, max_len, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), NewGELU(), nn.Linear(4 * d, d), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class MinGPT(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.register_buffer("pos", sinusoidal_table(c.max_len, c.d_model))
        self.embed_norm = nn.LayerNorm(c.d_model)  # the official Embedding module ends in one
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.Sequential(
            *(MinGPTBlock(c.d_model, c.heads, c.max_len, c.dropout) for _ in range(c.layers))
        )
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed_norm(self.tok(ids) + self.pos[: ids.shape[1]]))
        return self.head(self.ln_f(self.blocks(x)))


def timed_training(
    forward: nn.Module,
    opt: torch.optim.Optimizer,
    ids: torch.Tensor,
    labels: torch.Tensor,
    batches: list[np.ndarray],
    pad_to: int | None,
    lengths: np.ndarray,
    prompts: np.ndarray | None,
    warmup: int,
) -> tuple[float, int]:
    """Seconds and real tokens for the timed batches (after `warmup` untimed ones).

    With `prompts`, the model skips the question positions in its last block, as
    circuitlab's training loop does (GPT.forward's `logits_from`).
    """
    seconds, tokens = 0.0, 0
    for i, rows in enumerate(batches):
        width = pad_to or int(lengths[rows].max())
        first = 0 if prompts is None else int(prompts[rows].min()) - 1
        start = time.perf_counter()
        if prompts is None:
            logits = forward(ids[rows, :width])
        else:
            logits, _ = forward(ids[rows, :width], logits_from=first)
        loss = F.cross_entropy(logits.flatten(0, 1), labels[rows, first:width].flatten(),
                               ignore_index=-100)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(forward.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            seconds += time.perf_counter() - start
            tokens += int(lengths[rows].sum())
    return seconds, tokens


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--mix-smaller", type=float, default=1 / 3,
        help="share of smaller problems, as the official --under arithmetic data has",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timed rounds per implementation")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    warmup = 3
    if args.threads:
        torch.set_num_threads(args.threads)
    mix = args.mix_smaller if args.task == "arithmetic" else 0.0
    config = TrainConfig(task=args.task, size=args.size, num=args.batch_size * 80, test_num=10,
                         mix_smaller=mix)  # fmt: skip
    data = prepare(config)
    train = data.train
    ids = torch.as_tensor(train.ids)
    labels = torch.as_tensor(loss_labels(train.ids, train.lengths, train.prompt))
    steps = args.steps + warmup
    # Same examples for both: the official side takes them in random batches padded to the
    # dataset maximum, circuitlab in length-bucketed batches.
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    official_batches = [order[i * args.batch_size : (i + 1) * args.batch_size]
                        for i in range(steps)]  # fmt: skip
    chosen = np.concatenate(official_batches)
    bucketed = [chosen[b] for b in epoch_plan(train.lengths[chosen], args.batch_size, 0, 0)]
    global_max = train.max_len

    contenders = {
        "official pattern": (MinGPT, official_batches, global_max, None),
        "circuitlab": (GPT, bucketed, None, train.prompt),
    }
    models, optimizers = {}, {}
    for name, (make, *_) in contenders.items():
        torch.manual_seed(0)
        models[name] = make(data.model_config).train()
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4,
                                             weight_decay=0.01)  # fmt: skip
    # Alternating rounds, so a slow spell on a shared machine hits both sides alike.
    totals = {name: [0.0, 0] for name in contenders}
    for round_ in range(args.rounds):
        for name, (_, batches, pad, prompts) in contenders.items():
            seconds, tokens = timed_training(
                models[name], optimizers[name], ids, labels, batches, pad, train.lengths,
                prompts, warmup if round_ == 0 else 0,
            )  # fmt: skip
            totals[name][0] += seconds
            totals[name][1] += tokens
    results = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    flops_token = GPT(data.model_config).flops_per_token(int(train.lengths.mean()))
    peak = matmul_peak()
    pad_official = 1 - train.lengths[chosen].sum() / (global_max * len(chosen))
    print(
        f"task {args.task} n={args.size}, batch {args.batch_size}, {args.rounds} x "
        f"{args.steps} timed steps, "
        f"{torch.get_num_threads()} threads; official model size (3 layers, d 256, 4 heads)"
    )
    print(f"padding in official batches: {pad_official:.0%} of token slots")
    print("| implementation | real tokens/s | model GFLOP/s | of matmul peak |")
    print("| --- | --- | --- | --- |")
    for name, rate in results.items():
        achieved = rate * flops_token
        print(f"| {name} | {rate:,.0f} | {achieved / 1e9:.1f} | {achieved / peak:.0%} |")
    ratio = results["circuitlab"] / results["official pattern"]
    print(
        f"speed-up: {ratio:.2f}x (target >= 2x); matmul peak {peak / 1e9:.1f} GFLOP/s (fp32 1024^3)"
    )


if __name__ == "__main__":
    main()
