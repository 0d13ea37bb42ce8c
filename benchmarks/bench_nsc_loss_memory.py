"""Peak memory of one NSC-SFT step, chunked loss vs unchunked.

    python benchmarks/bench_nsc_loss_memory.py

A tiny Llama (one layer, hidden size 64) with a 152k vocabulary (Qwen2.5's 152064) trains
one optimizer step (`Trainer.step`, the code `analog train` runs) on one example of
--tokens answer tokens, with the KL to the reference on all of them (lambda 0.1), once with
`--loss-chunk-tokens 0` (unchunked) and once with --chunk (1024, the default). References
(--references): live (LoRA, the reference is the model with its adapters off), hidden (full
fine-tuning against the cached head input and frozen head), cached (LoRA, top-64 cache).

Each (reference, loss, allocator) runs in a fresh subprocess, so no run inherits another's
heap. Memory is the process's resident set (VmRSS / VmHWM of /proc/self/status, what
resource.getrusage's ru_maxrss reports): the high-water mark is reset (`clear_refs` 5) after
the model, data and any reference cache are ready and read after the step, so `step_peak`
is the step's own peak and `above_start` what the step added to the RSS it started from.
Allocators: glibc as it comes (`default`), and with `analog train`'s setting
(`core.devices.reuse_freed_memory`: freed large blocks stay in the heap; `reuse`), under
which a process keeps the RSS of every earlier peak, a cache's precomputation included.

An unchunked step needs several [tokens, vocab] float32 tensors (2.5 GB each at 4096 x
152064): a run whose estimate exceeds the memory available is skipped and says so (--force
runs it anyway). Prints one JSON line per run and a summary with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCES = ("live", "hidden", "cached")
ALLOCATORS = ("default", "reuse")


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def child(args: argparse.Namespace) -> dict:
    """One step in this process; returns what it measured."""
    import torch
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitlab.analog.nsc_sft import NSCConfig, Trainer
    from circuitlab.analog.sft_data import IGNORE, Example, SFTData, Truncation
    from circuitlab.core.devices import reuse_freed_memory
    from circuitlab.core.lm import LoadedLM
    from circuitlab.core.runs import RunDir

    reused = reuse_freed_memory() if args.allocator == "reuse" else False
    if args.allocator == "reuse" and not reused:
        raise SystemExit("reuse_freed_memory() did not take (not glibc, or MALLOC_* set)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=args.tokens + 64, tie_word_embeddings=True,
        )
    )  # fmt: skip
    # random token ids over the whole vocabulary; no tokenizer has 152k tokens here, and the
    # step reads only the pad id from one
    ids = torch.randint(
        1, args.vocab, (args.tokens + 8,), generator=torch.Generator().manual_seed(0)
    )
    prompt = 8
    example = Example(ids.tolist(), [IGNORE] * prompt + ids[prompt:].tolist(), source=1)
    fits = Truncation("cut", len(example.input_ids), 1, 0, len(example.input_ids), 0, 0, 0, 0)
    data = SFTData([example], records=1, filtered=0, too_long=0, truncated=0, truncation=fits)
    tokenizer = type("PadOnly", (), {"pad_token_id": 0})()
    work = Path(args.work)
    (work / "data.jsonl").write_text('{"prompt": "q", "response": "r"}\n')
    lora = args.reference != "hidden"
    config = NSCConfig(
        data=str(work / "data.jsonl"), kl_lambda=0.1, reference=args.reference, lora=lora,
        batch_size=1, max_length=args.tokens + 8, lr=1e-4, loss_chunk_tokens=args.chunk,
    )  # fmt: skip
    run = RunDir.open(work / "run", {"bench": "memory"})
    trainer = Trainer(config, run, LoadedLM(model, tokenizer, "tiny", "tiny"), data,
                      Accelerator(cpu=True))  # fmt: skip
    if args.reference in ("hidden", "cached"):
        trainer.precompute()
    before_step_peak = rss_kb("VmHWM")
    start = rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    record = trainer.step(0)
    seconds = time.perf_counter() - started
    peak = rss_kb("VmHWM")
    return {
        "reference": args.reference,
        "loss": "unchunked" if args.chunk == 0 else f"chunked {args.chunk}",
        "allocator": args.allocator,
        "tokens": int(record["answer_tokens"]),
        "vocab": args.vocab,
        "start_gb": round(start / 2**20, 3),
        "step_peak_gb": round(peak / 2**20, 3),
        "above_start_gb": round((peak - start) / 2**20, 3),
        "peak_before_step_gb": round(before_step_peak / 2**20, 3),
        "step_seconds": round(seconds, 2),
        "ce": round(record["ce"], 6),
        "kl": record["kl"],
    }


def estimate_gb(chunk: int, tokens: int, vocab: int) -> float:
    """An estimate of a step's peak: 7.5 [rows, vocab] float32 tensors (measured: about 6.5
    unchunked at 512 tokens), plus 1.5 GB."""
    rows = tokens if chunk == 0 else min(chunk, tokens)
    return 7.5 * rows * vocab * 4 / 2**30 + 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--references", default="live,hidden")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="run past the memory estimate")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", default="live", help=argparse.SUPPRESS)
    parser.add_argument("--allocator", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for reference in args.references.split(","):
        for allocator in args.allocators.split(","):
            for chunk in (args.chunk, 0):  # chunked first: it is the one that surely fits
                need, free = estimate_gb(chunk, args.tokens, args.vocab), available_gb()
                label = {"reference": reference, "allocator": allocator, "chunk": chunk}
                if need > free and not args.force:
                    skipped = {**label, "skipped": f"needs ~{need:.1f} GB, {free:.1f} available"}
                    print(json.dumps(skipped), flush=True)
                    results.append(skipped)
                    continue
                with tempfile.TemporaryDirectory() as work:
                    command = [
                        sys.executable, __file__, "--child", "--reference", reference,
                        "--allocator", allocator, "--chunk", str(chunk), "--work", work,
                        "--tokens", str(args.tokens), "--vocab", str(args.vocab),
                        "--hidden", str(args.hidden), "--threads", str(args.threads),
                    ]  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    failed = {**label, "failed": done.returncode, "stderr": done.stderr[-2000:]}
                    print(json.dumps(failed), flush=True)
                    results.append(failed)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(result), flush=True)
                results.append(result)
    ratios = {}
    for reference in args.references.split(","):
        for allocator in args.allocators.split(","):
            pair = [r for r in results if r.get("reference") == reference
                    and r.get("allocator") == allocator and "step_peak_gb" in r]  # fmt: skip
            if len(pair) == 2:
                chunked, whole = pair
                ratios[f"{reference}/{allocator}"] = {
                    "step_peak": round(whole["step_peak_gb"] / chunked["step_peak_gb"], 2),
                    "above_start": round(whole["above_start_gb"] / chunked["above_start_gb"], 2),
                }
    print(json.dumps({"runs": results, "unchunked_over_chunked": ratios}, indent=1))


if __name__ == "__main__":
    main()
