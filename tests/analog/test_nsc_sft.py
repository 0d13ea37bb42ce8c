"""NSC-SFT on a tiny random Llama: masking, the KL term, lambda = 0, LoRA reference, resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitlab.analog import nsc_loss
from circuitlab.analog.nsc_sft import NSCConfig, kl_summary, step_examples, train
from circuitlab.analog.sft_data import IGNORE, chat_response, collate, load_sft_data
from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import LoadedLM, load_lm
from circuitlab.core.schedule import lr_at

# one torch thread: on a small shared CPU a second thread mostly waits
pytestmark = pytest.mark.usefixtures("one_thread")


def config(qa_file, model_dir, **kw) -> NSCConfig:
    options = {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "save_every": 3, "max_length": 96,
               "epochs": 20}  # fmt: skip
    options.update(kw)
    return NSCConfig(data=str(qa_file), model=str(model_dir), **options)


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_masking_excludes_the_prompt(tiny_model_dir, qa_file):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = load_sft_data(qa_file, tokenizer, max_length=96)
    assert data.records == 12 and data.filtered == 3 and len(data.examples) == 9
    record = json.loads(qa_file.read_text().splitlines()[1])
    example = data.examples[0]
    supervised = [t for t in example.labels if t != IGNORE]
    first = example.labels.index(supervised[0])
    assert all(t == IGNORE for t in example.labels[:first])  # the whole prompt is masked
    assert example.labels[first:] == example.input_ids[first:]  # the whole reply is not
    reply = tokenizer.decode(supervised)
    assert reply == chat_response(tokenizer, record["prompt"], record["response"])
    assert reply.startswith("<think>") and reply.endswith("<|im_end|>\n")
    assert record["prompt"] in tokenizer.decode(example.input_ids[:first])
    batch = collate(data.examples[:3], tokenizer.pad_token_id)
    pos = nsc_loss.positions(batch["labels"], batch["attention_mask"], "response")
    assert int(pos.ce.sum()) == int((batch["labels"] != IGNORE).sum())
    assert pos.kl is pos.ce  # the training step reuses the CE rows for the KL on this identity
    everything = nsc_loss.positions(batch["labels"], batch["attention_mask"], "all")
    assert int(everything.kl.sum()) == int(batch["attention_mask"][:, 1:].sum())
    assert everything.kl is not everything.ce


@pytest.mark.parametrize(
    "lora, reference", [(True, "live"), (False, "live"), (True, "cached"), (False, "hidden")]
)
def test_kl_is_zero_at_the_start_and_grows_as_the_model_moves(
    tiny_model_dir, qa_file, tmp_path, lora, reference
):
    result = train(
        config(qa_file, tiny_model_dir, lora=lora, reference=reference, kl_lambda=0.5),
        tmp_path / "run",
        progress=False,
    )
    kl = [r["kl"] for r in metrics(tmp_path / "run")]
    assert len(kl) == 6 and abs(kl[0]) < 1e-6  # the reference *is* the model at step 1
    assert kl[-1] > 1e-5 and kl[-1] > kl[1] > 0
    assert result["complete"] and result["first_kl"] == kl[0]
    assert all(r["ce"] > 0 and r["loss"] == pytest.approx(r["ce"] + 0.5 * r["kl"]) for r in
               metrics(tmp_path / "run"))  # fmt: skip
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (tmp_path / "run" / "model" / weights).is_file()


def test_lambda_zero_is_plain_sft_exactly(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    from circuitlab.analog import reference

    def never(*args, **kwargs):
        raise AssertionError("lambda = 0 must not run the reference")

    monkeypatch.setattr(reference.LiveReference, "logp", never)
    monkeypatch.setattr(reference, "precompute_reference", never)
    cfg = config(qa_file, tiny_model_dir, kl_lambda=0.0, warmup=0.2, max_steps=4)
    result = train(cfg, tmp_path / "run", progress=False)
    # the KL was never computed: the log line must not report it as 0
    assert kl_summary(result) == "KL not measured (lambda 0)"
    assert kl_summary({**result, "kl_lambda": 0.1, "final_kl": 0.01234}) == "KL 0.0123"
    assert kl_summary({**result, "kl_lambda": 0.1, "final_kl": None}).endswith("(no steps run)")
    trained = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    # plain SFT by hand: the transformers loss (shifted CE over the labelled tokens), AdamW
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = load_sft_data(qa_file, tokenizer, max_length=96).examples
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(4):
        lr = lr_at(step, 4, peak=cfg.learning_rate, warmup=cfg.warmup, schedule=cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        picks = step_examples(step, len(examples), 4, 0)
        batch = collate([examples[i] for i in picks], tokenizer.pad_token_id)
        loss = model(**batch).loss
        if step == 0:
            assert loss.item() == pytest.approx(metrics(tmp_path / "run")[0]["ce"], abs=1e-5)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    assert all(r["kl"] == 0 for r in metrics(tmp_path / "run"))
    for name, value in model.state_dict().items():
        if name in trained:
            torch.testing.assert_close(trained[name], value, atol=2e-5, rtol=1e-4)


def test_lora_reference_equals_the_base_models_logits(tiny_model_dir, qa_file, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lm = LoadedLM(model, tokenizer, "tiny", str(tiny_model_dir))
    train(config(qa_file, tiny_model_dir, lora=True, kl_lambda=0.1), tmp_path / "run", lm=lm,
          progress=False)  # fmt: skip
    from circuitlab.analog.nsc_sft import load_model

    trained = load_model(str(tmp_path / "run")).lm.model  # base + the saved adapter
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([tokenizer("An op-amp with negative feedback")["input_ids"]])
    with torch.no_grad():
        expected = base(ids).logits
        with trained.disable_adapter():
            disabled = trained(ids).logits
        adapted = trained(ids).logits
    torch.testing.assert_close(disabled, expected, atol=1e-6, rtol=0)
    assert (adapted - expected).abs().max() > 1e-3  # the adapters did learn something


def test_lora_on_the_top_layers_runs_only_them_for_the_reference_and_trains_the_same(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    from circuitlab.analog import reference

    calls = []
    suffix_logp = reference.suffix_logp
    monkeypatch.setattr(reference, "suffix_logp", lambda *a: calls.append(1) or suffix_logp(*a))
    cfg = config(qa_file, tiny_model_dir, lora=True, lora_layers=1, kl_lambda=0.5, max_steps=4,
                 loss_chunk_tokens=0)  # fmt: skip
    train(cfg, tmp_path / "top", progress=False)
    assert len(calls) == 4  # one reference pass per step, through the top layer only
    monkeypatch.setattr(reference, "adapted_suffix", lambda model: None)  # the full pass
    train(cfg, tmp_path / "full", progress=False)
    assert len(calls) == 4
    top, full = metrics(tmp_path / "top"), metrics(tmp_path / "full")
    assert abs(top[0]["kl"]) < 1e-6 and top[-1]["kl"] > 1e-5
    for a, b in zip(top, full, strict=True):
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-7)
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-5)
    weights = "model/adapter_model.safetensors"
    mine, theirs = load_file(tmp_path / "top" / weights), load_file(tmp_path / "full" / weights)
    assert mine.keys() == theirs.keys() and all(".layers.1." in k for k in mine)
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lora", [True, False])
def test_the_hidden_state_cache_trains_as_the_live_reference_does(
    tiny_model_dir, qa_file, tmp_path, lora
):
    """Cached LM-head inputs and a frozen head give the live reference's KL, step by step."""
    cfg = config(qa_file, tiny_model_dir, lora=lora, kl_lambda=0.5, max_steps=4)
    train(cfg, tmp_path / "live", progress=False)
    hidden = dataclasses.replace(cfg, reference="hidden")
    train(hidden, tmp_path / "hidden", progress=False)
    live, cached = metrics(tmp_path / "live"), metrics(tmp_path / "hidden")
    assert abs(cached[0]["kl"]) < 1e-6 and cached[-1]["kl"] > 1e-5
    for a, b in zip(live, cached, strict=True):
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-4, abs=1e-7)
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-5)
    # the frozen head is the original one, also where full fine-tuning trains the head
    head = load_file(tmp_path / "hidden" / "reference" / "head.safetensors")["weight"]
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_output_embeddings()
    torch.testing.assert_close(head, original.weight.detach())


def test_a_resumed_hidden_state_run_keeps_the_original_head(tiny_model_dir, qa_file, tmp_path):
    """Full fine-tuning moves the head; a resumed run must read the saved original, not copy
    the trained one, to match an uninterrupted run."""
    cfg = config(qa_file, tiny_model_dir, kl_lambda=0.5, reference="hidden", max_steps=4,
                 save_every=2)  # fmt: skip
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=2)
    train(cfg, tmp_path / "split", progress=False)
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(whole, split, strict=True):
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-5, abs=1e-8)
    assert whole[-1]["kl"] > 1e-5


def test_the_hidden_state_cache_refuses_logits_that_are_not_the_heads_output(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    from circuitlab.analog import reference

    scaled = reference.model_logp  # as a model that scales its logits after the head would
    monkeypatch.setattr(reference, "model_logp", lambda m, b, k: scaled(m, b, k) * 0.5)
    cfg = config(qa_file, tiny_model_dir, lora=True, kl_lambda=0.5, reference="hidden")
    with pytest.raises(CircuitlabError, match="not its LM head's output"):
        train(cfg, tmp_path / "run", progress=False)


def test_the_hidden_state_cache_refuses_a_model_that_never_calls_its_head(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    """A model that computes its logits without calling its output-embedding module leaves
    nothing to cache: a clear error, not a cache without hidden states."""
    from transformers import LlamaForCausalLM

    spare: dict[int, torch.nn.Module] = {}

    def unused_copy(model):  # the head the hook sees, never called by the forward pass
        return spare.setdefault(id(model), copy.deepcopy(model.lm_head))

    monkeypatch.setattr(LlamaForCausalLM, "get_output_embeddings", unused_copy)
    cfg = config(qa_file, tiny_model_dir, kl_lambda=0.5, reference="hidden")
    with pytest.raises(CircuitlabError, match="without calling its output-embedding module"):
        train(cfg, tmp_path / "run", progress=False)


def test_bucket_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_otherwise():
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, 40) * 3, dim=-1)
    ref = torch.log_softmax(torch.randn(5, 40) * 3, dim=-1)
    for direction in nsc_loss.DIRECTIONS:
        full = nsc_loss.token_kl(logp, ref, direction)
        ids, values, tail = nsc_loss.top_k_reference(ref, 40)
        exact = nsc_loss.bucket_kl(logp, ids, values, tail, direction)
        torch.testing.assert_close(exact, full, atol=1e-5, rtol=1e-5)
        ids, values, tail = nsc_loss.top_k_reference(ref, 8)
        bound = nsc_loss.bucket_kl(logp, ids, values, tail, direction)
        assert (bound <= full + 1e-6).all() and (bound >= -1e-6).all()
    assert nsc_loss.token_kl(ref, ref, "model||reference").abs().max() < 1e-6


def test_resume_after_a_kill_reaches_the_uninterrupted_weights(tiny_model_dir, qa_file, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "circuitlab", "analog", "train", "--data", str(qa_file),
        "--model", str(tiny_model_dir), "--out", str(out), "--lambda", "0.2", "--lora",
        "--max-steps", "12", "--save-every", "2", "--lr", "0.01", "--max-length", "96",
        "--epochs", "20", "--threads", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-00000004").is_dir() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "model").exists()  # killed before the end
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, 13))  # every step logged exactly once
    straight = train(
        config(qa_file, tiny_model_dir, lora=True, kl_lambda=0.2, max_steps=12, save_every=2,
               threads=1),
        tmp_path / "straight",
        progress=False,
    )  # fmt: skip
    assert straight["steps"] == 12
    resumed = load_file(str(out / "model" / "adapter_model.safetensors"))
    reference = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-6, rtol=1e-5)
    assert [r["kl"] for r in metrics(out)][-1] == pytest.approx(
        [r["kl"] for r in metrics(tmp_path / "straight")][-1], rel=1e-4
    )


def tensorboard_scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    found = [(e.step, e.value) for e in events.Scalars(tag)]
    assert len({s for s, _ in found}) == len(found), f"a step of {tag} shown twice"
    return dict(found)


def test_report_to_tensorboard_shows_the_metrics_jsonl_losses_across_a_resume(
    tiny_model_dir, qa_file, tmp_path
):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    # steps 1-4 logged, the checkpoint is step 3: the rerun logs step 4 again
    train(config(qa_file, tiny_model_dir, kl_lambda=0.2, threads=1, report_to="tensorboard"),
          out, progress=False, stop_after=4)  # fmt: skip
    assert max(tensorboard_scalars(out, "loss")) == 4
    command = [
        sys.executable, "-m", "circuitlab", "analog", "train", "--data", str(qa_file),
        "--model", str(tiny_model_dir), "--out", str(out), "--lambda", "0.2",
        "--max-steps", "6", "--batch-size", "4", "--save-every", "3", "--lr", "0.01",
        "--max-length", "96", "--epochs", "20", "--threads", "1", "--report-to", "tensorboard",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    for tag in ("loss", "ce", "kl", "lr"):
        want = {r["step"]: float(np.float32(r[tag])) for r in metrics(out)}
        assert tensorboard_scalars(out, tag) == want, tag
    assert "report_to" not in json.loads((out / "config.json").read_text())


@pytest.mark.parametrize(
    "options",
    [
        {"lora": True, "kl_tokens": "all"},  # KL rows that are not CE rows
        {"lora": True, "lora_layers": 1},  # the live reference from the top layer's input
        {"lora": False},  # a frozen copy; the tied head trains
        {"lora": True, "reference": "cached", "kl_tokens": "all"},
        {"lora": False, "reference": "hidden"},
        {"lora": False, "kl_lambda": 0.0},
    ],
)
def test_the_chunked_loss_trains_as_the_unchunked_one(
    tiny_model_dir, qa_file, tmp_path, monkeypatch, options
):
    from circuitlab.analog import reference

    calls = []
    for name in ("model_logp", "suffix_logp", "suffix_head_input"):
        counted = getattr(reference, name)
        monkeypatch.setattr(reference, name,
                            lambda *a, _f=counted, _n=name: calls.append(_n) or _f(*a))  # fmt: skip
    cfg = config(qa_file, tiny_model_dir, **{"kl_lambda": 0.5, "max_steps": 3, **options})
    whole = train(dataclasses.replace(cfg, loss_chunk_tokens=0), tmp_path / "whole",
                  progress=False)  # fmt: skip
    unchunked_calls, calls[:] = list(calls), []
    chunked = train(dataclasses.replace(cfg, loss_chunk_tokens=7), tmp_path / "chunked",
                    progress=False)  # fmt: skip
    assert (whole["loss_chunk_tokens"], chunked["loss_chunk_tokens"]) == (0, 7)
    # the chunked run never made the full log-probs in training (only to fill a cache)
    precomputed = 3 if options.get("reference") in ("cached", "hidden") else 0
    assert calls.count("model_logp") == precomputed
    if options.get("lora_layers"):
        assert unchunked_calls.count("suffix_logp") == 3 and calls == ["suffix_head_input"] * 3
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "chunked")
    for x, y in zip(a, b, strict=True):
        assert y["ce"] == pytest.approx(x["ce"], rel=1e-5)
        assert y["kl"] == pytest.approx(x["kl"], rel=1e-4, abs=1e-7)
    if cfg.kl_lambda:
        assert b[-1]["kl"] > 1e-5
    weights = "adapter_model.safetensors" if cfg.lora else "model.safetensors"
    mine = load_file(tmp_path / "chunked" / "model" / weights)
    theirs = load_file(tmp_path / "whole" / "model" / weights)
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], atol=2e-6, rtol=1e-4)


def test_the_loss_chunk_size_is_not_part_of_the_run(tiny_model_dir, qa_file, tmp_path):
    """It changes how the loss is computed, not what: a run resumes under another size."""
    cfg = config(qa_file, tiny_model_dir, lora=True, kl_lambda=0.5, max_steps=4, save_every=2)
    train(cfg, tmp_path / "run", progress=False, stop_after=2)
    assert "loss_chunk_tokens" not in json.loads((tmp_path / "run" / "config.json").read_text())
    result = train(dataclasses.replace(cfg, loss_chunk_tokens=0), tmp_path / "run",
                   progress=False)  # fmt: skip
    assert result["complete"] and result["loss_chunk_tokens"] == 0
    with pytest.raises(CircuitlabError, match="loss_chunk_tokens -1"):
        NSCConfig(data="x.jsonl", loss_chunk_tokens=-1)


def test_logits_made_after_the_head_are_refused_by_the_chunked_loss(
    tiny_model_dir, qa_file, tmp_path, monkeypatch
):
    """Soft-capped or scaled logits are not the head's output: projecting the head input
    would train on other log-probs, so the chunked loss refuses and names the way out."""
    from transformers import LlamaForCausalLM

    forward = LlamaForCausalLM.forward

    def scaled(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", scaled)
    cfg = config(qa_file, tiny_model_dir, lora=True, kl_lambda=0.5, max_steps=1)
    with pytest.raises(CircuitlabError, match="use --loss-chunk-tokens 0"):
        train(cfg, tmp_path / "chunked", progress=False)
    train(dataclasses.replace(cfg, loss_chunk_tokens=0), tmp_path / "whole", progress=False)


def test_bad_training_input_is_a_clear_error(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "response": "r"}\n{"question": "only a question"}\n')
    with pytest.raises(CircuitlabError, match=r"bad.jsonl:2: needs 'prompt' and 'response'"):
        train(NSCConfig(data=str(bad), model=str(tiny_model_dir)), tmp_path / "r1",
              progress=False)  # fmt: skip
    with pytest.raises(CircuitlabError, match="does not exist"):
        train(NSCConfig(data=str(tmp_path / "none.jsonl")), tmp_path / "r2", progress=False)
    rejected = tmp_path / "rejected.jsonl"
    rejected.write_text('{"prompt": "q", "response": "r", "verdict": "reject"}\n')
    with pytest.raises(CircuitlabError, match="none of its 1 records is usable"):
        train(NSCConfig(data=str(rejected), model=str(tiny_model_dir)), tmp_path / "r3",
              progress=False)  # fmt: skip
    for kw, message in [
        ({"kl_lambda": -1}, "kl_lambda"),
        ({"kl_direction": "forward"}, "kl_direction"),
        ({"reference": "disk"}, "reference"),
        ({"max_length": 4}, "max_length"),
        ({"truncation": "keep"}, "truncation 'keep': use cut or drop"),
    ]:
        with pytest.raises(CircuitlabError, match=message):
            NSCConfig(data="x.jsonl", **kw)


def test_truncation_is_reported_in_results_and_drop_trains_on_what_fits(
    tiny_model_dir, tmp_path, capsys
):
    records = [{"prompt": f"Why {i}?", "response": f"<answer>\nGain {i}.\n</answer>"}
               for i in range(4)]  # fmt: skip
    records += [{"prompt": "Why?", "response": "<think>\n" + " a" * 120 + "\n</think>\n"
                 "<answer>\nGain.\n</answer>"}] * 2  # fmt: skip
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    options = {"max_steps": 1, "batch_size": 2, "max_length": 96}
    cut = train(config(data, tiny_model_dir, **options), tmp_path / "cut", progress=False)
    assert cut["examples"] == 6 and cut["truncated"] == 2
    report = cut["truncation"]
    assert (report["mode"], report["examples"], report["truncated"]) == ("cut", 6, 2)
    assert report["share"] == pytest.approx(2 / 6, abs=1e-4) and report["tokens_lost"] > 2 * 60
    assert (report["answer_cut"], report["eos_cut"], report["dropped"]) == (2, 2, 0)
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["truncation"] == report

    drop = train(config(data, tiny_model_dir, truncation="drop", **options), tmp_path / "drop")
    assert drop["examples"] == 4 and drop["truncation"]["dropped"] == 2
    assert drop["truncation"]["tokens_lost"] > report["tokens_lost"]  # whole examples went
    printed = capsys.readouterr().out  # at the start of training, before the bars
    assert "data: 2 of 6 examples (33.3%) longer than --max-length 96, dropped:" in printed
    stored = json.loads((tmp_path / "drop" / "config.json").read_text())
    assert stored["truncation"] == "drop"


def test_a_template_that_rewrites_the_reply_stops_training_before_it_writes(
    tiny_model_dir, qa_file, tmp_path
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "message['content']", "message['content'].split('</think>')[-1]"
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lm = LoadedLM(model, tokenizer, "tiny", str(tiny_model_dir))
    with pytest.raises(CircuitlabError, match=r"qa.jsonl:2: the chat template .* rewrites"):
        train(config(qa_file, tiny_model_dir), tmp_path / "run", lm=lm, progress=False)
    assert not (tmp_path / "run").exists()


def test_dtype_is_validated_and_float32_stays_the_default():
    with pytest.raises(
        CircuitlabError, match=r"dtype 'fp8': load the weights as float32, bfloat16, float16"
    ):
        NSCConfig(data="x.jsonl", dtype="fp8")
    assert NSCConfig(data="x.jsonl").dtype == "float32"


@pytest.mark.parametrize("lora, reference", [(False, "live"), (True, "cached")])
def test_bfloat16_weights_train_with_finite_float32_losses(
    tiny_model_dir, qa_file, tmp_path, monkeypatch, lora, reference
):
    from circuitlab.analog import nsc_sft

    loaded: list[LoadedLM] = []

    def spy(*args, **kwargs):
        loaded.append(load_lm(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(nsc_sft, "load_lm", spy)
    cfg = config(qa_file, tiny_model_dir, dtype="bfloat16", lora=lora, reference=reference,
                 kl_lambda=0.5, max_steps=2, save_every=2)  # fmt: skip
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["complete"]
    assert loaded[0].model.get_input_embeddings().weight.dtype == torch.bfloat16
    rows = metrics(tmp_path / "run")
    assert len(rows) == 2
    assert all(math.isfinite(r["ce"]) and math.isfinite(r["kl"]) for r in rows)
    assert rows[0]["ce"] > 0 and abs(rows[0]["kl"]) < 1e-2  # the reference is the model
    # what was trained keeps its dtype: bf16 full weights, float32 LoRA adapters (peft)
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    saved = load_file(str(tmp_path / "run" / "model" / name))
    assert {t.dtype for t in saved.values()} == {torch.float32 if lora else torch.bfloat16}
    # and the run reloads for evaluation in the dtype asked for
    reloaded = nsc_sft.load_model(str(tmp_path / "run"), dtype="bfloat16").lm.model
    assert reloaded.get_input_embeddings().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("direction", nsc_loss.DIRECTIONS)
def test_token_kl_matches_the_formula_and_its_gradient(direction):
    """token_kl is a hand-written autograd function: values and gradients against autograd."""
    torch.manual_seed(0)
    logits = torch.randn(6, 30, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(6, 30, dtype=torch.float64) * 2, dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    if direction == "model||reference":
        formula = (logp.exp() * (logp - ref)).sum(-1)
    else:
        formula = (ref.exp() * (ref - logp)).sum(-1)
    weights = torch.rand(6, dtype=torch.float64)
    (expected,) = torch.autograd.grad((formula * weights).sum(), logits)
    got = nsc_loss.token_kl(torch.log_softmax(logits, dim=-1), ref, direction)
    torch.testing.assert_close(got, formula.detach())
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    torch.testing.assert_close(grad, expected)
    assert torch.autograd.gradcheck(
        lambda z: nsc_loss.token_kl(torch.log_softmax(z, dim=-1), ref, direction), (logits,)
    )
