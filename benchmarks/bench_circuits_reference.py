"""Wall time of the patching reference on the embedded SmolLM2 (270 heads).

    python benchmarks/bench_circuits_reference.py [--num 64] [--threads 0] [--task ioi]

Runs `circuitlab circuits reference` (mean ablation) into a fresh temporary directory and
prints seconds in total and per prompt pair. Results depend heavily on other load on the CPU:
say what else was running when you quote a number.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

from circuitlab.circuits.reference import ReferenceConfig, run_reference


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = ReferenceConfig(
        task=args.task, num=args.num, threads=args.threads, batch_size=args.batch_size
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ref = run_reference(config, tmp)
        seconds = time.perf_counter() - start
    print(
        f"{args.task}: {args.num} prompts x 270 heads in {seconds:.0f} s "
        f"({seconds / args.num:.1f} s per prompt); circuit {len(ref['heads'])} heads"
    )


if __name__ == "__main__":
    main()
