"""Cost of NSC-SFT over plain SFT, and MCQ throughput: python benchmarks/bench_nsc_sft.py

1. step time on one fixed batch (4 QA examples of ~190 tokens, the embedded
   SmolLM2-135M-Instruct unless --model) for plain SFT (lambda 0) and NSC-SFT with the live
   reference, the cached top-k reference and the cached hidden states (exact; the frozen
   head runs each step), in three set-ups:
   - `lora_all_layers`: LoRA on every layer; the live reference is a second full pass;
   - `lora_top_layers`: LoRA on the top --lora-layers layers only (4, as `analog run`
     trains); the live reference runs only those layers, from the training forward's
     input to them (exact; see analog/reference.py);
   - `full`: full fine-tuning against a frozen copy (skip with --skip-full).
   Variants are timed round-robin (one step each per round) so a change in machine load
   hits all of them alike; medians are reported, with the ratio to plain SFT of the same
   set-up (`ratio_live_over_sft` is the issue's <= 1.4 target). One further step of each
   variant runs under torch's FlopCounterMode: `flops_live_over_sft` is the live reference's
   cost in matmul and attention FLOPs, the floor for any exact live pass (with LoRA on every
   layer a step has no weight gradients for the base, so the extra forward pass is ~1.5x in
   FLOPs). The two caches' one-off precomputations are timed separately.
2. the cached (top-64 + tail) KL against the exact full-vocabulary KL on the same batch
   after the model has moved, to show what the cache gives up;
3. MCQ evaluation throughput in questions per second on the shipped 60-question probe:
   log-likelihood (option text, shared-prompt KV cache, batch 16) and letter scoring.
Prints one JSON line per set-up as it finishes, then one JSON object with everything and
a `ratios` summary; numbers depend on the machine, the --threads and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def qa_file(work: Path) -> Path:
    filler = (
        "The collector current is beta times the base current, and the collector resistor "
        "turns that current into a voltage that swings opposite to the input. "
    )
    records = [
        {
            "prompt": f"Explain why the output of common-emitter stage {i} is inverted.",
            "response": f"<think>\n{filler * 3}\n</think>\n<answer>\nIt inverts.\n</answer>",
        }
        for i in range(4)
    ]
    path = work / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def bench_steps(
    model: str | None, work: Path, rounds: int, lora: bool, lora_layers: int = 0
) -> dict:
    from accelerate import Accelerator

    from circuitlab.analog import nsc_loss
    from circuitlab.analog.nsc_sft import NSCConfig, Trainer
    from circuitlab.analog.reference import LiveReference
    from circuitlab.analog.sft_data import collate, load_sft_data
    from circuitlab.core.lm import load_lm
    from circuitlab.core.runs import RunDir

    data_path = qa_file(work)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    trainers = {}
    precompute_seconds = {}
    for name, kl_lambda, reference in [
        ("sft", 0.0, "live"),
        ("nsc_live", 0.1, "live"),
        ("nsc_cached", 0.1, "cached"),
        ("nsc_hidden", 0.1, "hidden"),
    ]:
        config = NSCConfig(
            data=str(data_path), model=model, kl_lambda=kl_lambda, reference=reference,
            lora=lora, lora_layers=lora_layers, max_length=256, batch_size=4,
            lr=1e-4 if lora else 1e-6,
        )  # fmt: skip
        lm = load_lm(model)
        data = load_sft_data(data_path, lm.tokenizer, max_length=256)
        setup = f"lora{lora_layers or 'all'}" if lora else "full"
        run = RunDir.open(work / f"{setup}-{name}", {"bench": name})
        trainer = Trainer(config, run, lm, data, accelerator)
        if reference in ("cached", "hidden"):
            started = time.perf_counter()
            trainer.precompute()
            precompute_seconds[reference] = round(time.perf_counter() - started, 3)
        trainer.step(0)  # warm-up (allocations, first-call overheads)
        trainers[name] = trainer
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for step in range(1, rounds + 1):
        for name, trainer in trainers.items():
            times[name].append(trainer.step(step)["seconds"])
    median = {name: statistics.median(values) for name, values in times.items()}
    # matmul / attention FLOPs of one more step each: what the ratios would be if every
    # kernel ran equally fast; an exact live reference can beat that floor only by running
    # its kernels faster than plain SFT runs its own
    flops = {}
    for name, trainer in trainers.items():
        with FlopCounterMode(display=False) as counter:
            trainer.step(rounds + 1)
        flops[name] = counter.get_total_flops()
    # what the top-64 cache gives up, on the moved NSC model
    trainer = trainers["nsc_live"]
    batch = {
        k: v.to(accelerator.device)
        for k, v in collate(trainer.data.examples, trainer.pad_id).items()
    }
    pos = nsc_loss.positions(batch["labels"], batch["attention_mask"], "response")
    with torch.no_grad():
        from circuitlab.analog.reference import model_logp

        logp = model_logp(trainer.unwrapped, batch, pos.keep)[pos.kl]
        assert isinstance(trainer.reference, LiveReference)
        ref = trainer.reference.logp(batch, pos)
        full = nsc_loss.token_kl(logp, ref, "model||reference").mean()
        ids, values, tail = nsc_loss.top_k_reference(ref, 64)
        bucket = nsc_loss.bucket_kl(logp, ids, values, tail, "model||reference").mean()
    return {
        "lora": lora,
        "lora_layers": lora_layers if lora else None,
        "reference_from_layer": trainer.reference.suffix.start
        if trainer.reference.suffix
        else None,
        "tokens_per_step": int(batch["attention_mask"].sum()),
        "rounds": rounds,
        "median_step_seconds": {k: round(v, 3) for k, v in median.items()},
        "ratio_live_over_sft": round(median["nsc_live"] / median["sft"], 3),
        "ratio_cached_over_sft": round(median["nsc_cached"] / median["sft"], 3),
        "ratio_hidden_over_sft": round(median["nsc_hidden"] / median["sft"], 3),
        "step_gflops": {k: round(v / 1e9, 1) for k, v in flops.items()},
        "flops_live_over_sft": round(flops["nsc_live"] / flops["sft"], 3),
        "flops_hidden_over_sft": round(flops["nsc_hidden"] / flops["sft"], 3),
        "precompute_seconds": precompute_seconds,
        "kl_full_vocab": float(full),
        "kl_top64_bucketed": float(bucket),
    }


def bench_mcq(model: str | None) -> dict:
    from circuitlab.analog.mcq import MCQConfig, evaluate_mcq, load_mcq
    from circuitlab.core.devices import pick_device
    from circuitlab.core.lm import load_lm

    lm = load_lm(model, device=str(pick_device("auto")))
    items = load_mcq()
    out = {}
    for scoring in ("option", "letter"):
        evaluate_mcq(lm, items[:4], MCQConfig(scoring=scoring))  # warm-up
        result = evaluate_mcq(lm, items, MCQConfig(scoring=scoring, batch_size=16))
        out[scoring] = {
            "questions": result["n"],
            "questions_per_second": result["questions_per_second"],
            "accuracy": result["accuracy"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec [embedded SmolLM2-135M]")
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--lora-layers", type=int, default=4, help="top layers of the lora_top_layers set-up"
    )
    parser.add_argument("--skip-full", action="store_true", help="LoRA only")
    parser.add_argument("--skip-mcq", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="MCQ throughput only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from circuitlab.core.devices import reuse_freed_memory

    # as `analog train` does: without it, glibc maps and unmaps every large tensor afresh
    allocator = "glibc keeps freed blocks" if reuse_freed_memory() else "default"
    result: dict = {"threads": args.threads, "model": args.model or "embedded",
                    "allocator": allocator}  # fmt: skip
    setups = [("lora_all_layers", True, 0), ("lora_top_layers", True, args.lora_layers)]
    if args.skip_steps:
        setups = []
    elif not args.skip_full:
        setups.append(("full", False, 0))
    with tempfile.TemporaryDirectory() as tmp:
        for name, lora, layers in setups:
            result[name] = bench_steps(args.model, Path(tmp), args.rounds, lora, layers)
            print(json.dumps({name: result[name]}), flush=True)
    result["ratios"] = {  # empty with --skip-steps
        name: {
            "live_over_sft": result[name]["ratio_live_over_sft"],
            "cached_over_sft": result[name]["ratio_cached_over_sft"],
            "hidden_over_sft": result[name]["ratio_hidden_over_sft"],
            "flops_live_over_sft": result[name]["flops_live_over_sft"],
        }
        for name, _, _ in setups
    }
    if not args.skip_mcq:
        result["mcq"] = bench_mcq(args.model)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
