"""A baseline written the way the official CoT_benchmark generators work.

The official scripts (github.com/guyuntian/CoT_benchmark, */data.py) build one example at a
time in Python with NumPy scalar calls, deduplicate tuples in a set, and print direct and
chain-of-thought text files token by token. This file reproduces that pattern (our own
code, same algorithm and output) so the comparison runs anywhere; pass
`--official-dir CHECKOUT` to bench_cot_data.py to time the real scripts instead.

Usage: python official_style.py {arithmetic,lis} LENGTH TRAIN_SIZE OUT_DIR
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np


def arithmetic_example(length: int, p: int = 11) -> list[str]:
    """Expand a random number `length` times into `a op b`, then read the states backwards."""
    state = [str(random.randrange(p))]
    history = [state[:]]
    for _ in range(length):
        while True:
            at = random.randint(0, len(state) - 1)
            if state[at].isdigit():
                break
        x = int(state[at])
        while True:
            a, op = random.choice(range(p)), random.choice("+-*/")
            if op == "+":
                b = (x - a) % p
            elif op == "-":
                b = (a - x) % p
            elif op == "*":
                if a == 0 and x != 0:
                    continue
                b = random.randrange(p) if a == 0 else int(np.int64(x) * pow(a, p - 2, p) % p)
            else:
                if (a == 0) != (x == 0):
                    continue
                b = random.randrange(1, p) if a == 0 else int(np.int64(a) * pow(x, p - 2, p) % p)
            break
        left = state[at - 1] if at > 0 else None
        right = state[at + 1] if at + 1 < len(state) else None
        bracket = left == "/" or (op in "+-" and (left in ("*", "-") or right in ("*", "/")))
        piece = ["(", str(a), op, str(b), ")"] if bracket else [str(a), op, str(b)]
        state = state[:at] + piece + state[at + 1 :]
        history.append(state[:])
    sequence: list[str] = []
    for item in reversed(history):
        sequence = sequence + item + ["="]
    return sequence[:-1]


def lis_example(length: int, top: int = 250) -> list:
    start = length + 1
    runs = np.random.randint(3) + 1
    total = np.random.randint(length - 2) + 3
    if runs == 1:
        parts = [total]
    elif runs == 2:
        first = np.random.randint(total // 2 + 1) + 1
        parts = [first, total - first]
    else:
        first = np.random.randint(total // 3 + 1) + 1
        second = np.random.randint((total - first) // 2 + 1) + 1
        parts = [first, second, total - first - second]
    values = np.concatenate(
        [np.sort(np.random.choice(top - start, k, replace=False)) + start for k in parts]
    )
    places = np.sort(np.random.choice(length, total, replace=False))
    seq = np.random.randint(start, high=top, size=length)
    seq[places] = values
    dp = np.ones(length, dtype=np.int32)
    for i in range(length):
        for j in range(i):
            if seq[i] > seq[j]:
                dp[i] = max(dp[j] + 1, dp[i])
    return [*seq.tolist(), "<sep>", *dp.tolist(), "<sep>", np.max(dp)]


def main() -> None:
    task, length, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    random.seed(2023)
    np.random.seed(2023)
    make = arithmetic_example if task == "arithmetic" else lis_example
    stop = "=" if task == "arithmetic" else "<sep>"
    seen: set[tuple] = set()
    while len(seen) < size:
        seen.add(tuple(make(length)))
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/direct.txt", "w") as direct, open(f"{out}/chain.txt", "w") as chain:
        for sequence in seen:
            for token in sequence:
                print(token, end=" ", file=direct)
                if token == stop:
                    break
            print(sequence[-1], file=direct)
            for token in sequence:
                print(token, end=" ", file=chain)
            print("", file=chain)


if __name__ == "__main__":
    main()
