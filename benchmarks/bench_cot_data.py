"""Data generation speed: circuitlab vs the official per-example generators.

Times whole processes (interpreter start, imports, generation, deduplication, writing)
for 100k training examples of arithmetic n=4 and LIS n=50, and prints examples per second
and the ratio, all measured in this one run on this machine.

The baseline is official_style.py (the official algorithm and output, re-written so it
ships with the project); `--official-dir` times a checkout of guyuntian/CoT_benchmark.
Both baselines write direct AND chain-of-thought files from one generation, so circuitlab
is timed doing the same: one `cot data` run per format, generation counted twice.

    python benchmarks/bench_cot_data.py [--num 100000] [--official-dir PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [("arithmetic", 4, "arithmetic/data.py", []), ("lis", 50, "LIS/data.py",
         ["--number_range", "250"])]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100_000)
    parser.add_argument("--official-dir", type=Path, default=None)
    args = parser.parse_args()
    print("| task | examples | baseline | baseline ex/s | circuitlab ex/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for task, size, script, extra in CASES:
            if args.official_dir:
                name = "official script"
                base = [sys.executable, str(args.official_dir / script), "--file", f"{tmp}/o",
                        "--length", str(size), "--train_size", str(args.num),
                        "--test_size", "0", *extra]
            else:
                name = "official_style.py"
                base = [sys.executable, str(HERE / "official_style.py"), task, str(size),
                        str(args.num), f"{tmp}/o"]
            baseline = timed(base)
            ours = sum(
                timed([sys.executable, "-m", "circuitlab", "cot", "data", "--task", task,
                       "--size", str(size), "--format", fmt, "--num", str(args.num),
                       "--test-num", "0", "--out", f"{tmp}/{task}-{fmt}.jsonl"])
                for fmt in ("direct", "cot")
            )
            print(f"| {task} n={size} | {args.num} | {name} | {args.num / baseline:,.0f} "
                  f"| {args.num / ours:,.0f} | {baseline / ours:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
