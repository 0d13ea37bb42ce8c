"""Data generation speed: circuitlab vs the official per-example generators.

For arithmetic n=4 and LIS n=50 this times whole processes (interpreter start, imports,
generation, deduplication, writing) at 100k training examples and reports, all measured
in this one run on this machine:

- end to end: 100k / wall seconds of one process;
- throughput: (100k - 1k) / (t(100k) - t(1k)), i.e. with start-up cost taken out of both.

The baseline is official_style.py (the official algorithm and output, re-written so it
ships with the project); `--official-dir` times a checkout of guyuntian/CoT_benchmark.
A baseline run writes direct AND chain-of-thought files of one draw, as does
`cot data --format both`: that is the like-for-like column. The CoT file alone is shown too.

Both sides run as after any normal install: with Python's bytecode cache on (kept in a
temporary PYTHONPYCACHEPREFIX, even where the environment sets PYTHONDONTWRITEBYTECODE,
which would make every circuitlab run recompile the package's sources) and after one
untimed warm-up run of each command.

    python benchmarks/bench_cot_data.py [--num 100000] [--official-dir PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [
    ("arithmetic", 4, "arithmetic/data.py", []),
    ("lis", 50, "LIS/data.py", ["--number_range", "250"]),
]
SMALL = 1000


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def baseline_cmd(
    args: argparse.Namespace,
    task: str,
    size: int,
    script: str,
    extra: list[str],
    num: int,
    out: str,
) -> list[str]:
    if args.official_dir:
        return [
            sys.executable,
            str(args.official_dir / script),
            "--file",
            out,
            "--length",
            str(size),
            "--train_size",
            str(num),
            "--test_size",
            "0",
            *extra,
        ]
    return [sys.executable, str(HERE / "official_style.py"), task, str(size), str(num), out]


def ours_cmd(task: str, size: int, fmt: str, num: int, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "circuitlab",
        "cot",
        "data",
        "--task",
        task,
        "--size",
        str(size),
        "--format",
        fmt,
        "--num",
        str(num),
        "--test-num",
        "0",
        "--out",
        out,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100_000)
    parser.add_argument("--official-dir", type=Path, default=None)
    args = parser.parse_args()
    name = "official scripts" if args.official_dir else "official_style.py"
    print(
        f"baseline: {name}; {args.num} examples; end-to-end and throughput ratios; "
        "bytecode cache on, one warm-up run per command\n"
    )
    print(
        "| task | baseline ex/s | circuitlab both ex/s | ratio | throughput ratio "
        "| cot only: ratio | cot only: throughput ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = f"{tmp}/pycache"
        for task, size, script, extra in CASES:
            timed(baseline_cmd(args, task, size, script, extra, SMALL, f"{tmp}/warm"), env)
            for fmt in ("both", "cot"):
                timed(ours_cmd(task, size, fmt, SMALL, f"{tmp}/warm-{fmt}.jsonl"), env)
            base = {
                n: timed(baseline_cmd(args, task, size, script, extra, n, f"{tmp}/o{n}"), env)
                for n in (SMALL, args.num)
            }
            ours = {
                (fmt, n): timed(ours_cmd(task, size, fmt, n, f"{tmp}/{task}-{fmt}-{n}.jsonl"), env)
                for fmt in ("both", "cot")
                for n in (SMALL, args.num)
            }
            big, small = args.num, SMALL
            base_rate = (big - small) / (base[big] - base[small])
            both_rate = (big - small) / (ours["both", big] - ours["both", small])
            cot_rate = (big - small) / (ours["cot", big] - ours["cot", small])
            print(
                f"| {task} n={size} | {big / base[big]:,.0f} | {big / ours['both', big]:,.0f} "
                f"| {base[big] / ours['both', big]:.1f}x | {both_rate / base_rate:.1f}x "
                f"| {base[big] / ours['cot', big]:.1f}x | {cot_rate / base_rate:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
