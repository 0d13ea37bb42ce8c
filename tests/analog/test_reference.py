"""The live reference's top-layers shortcut: the same log-probs as the full reference pass.

With LoRA on layers F.. only, LiveReference runs just those layers from the hidden state
the training forward fed layer F. These tests hold it to the full pass on tiny random models of
every type it accepts (padding, grouped-query attention and sliding windows included), and
check that everything it does not recognise takes the full pass.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import LLAMA_FAMILY, SIZES
from transformers import AutoModelForCausalLM, GPT2Config

from circuitlab.analog import nsc_loss, reference
from circuitlab.analog.reference import LiveReference, model_logp

CONFIGS = LLAMA_FAMILY


# one torch thread: on a small shared CPU a second thread mostly waits
pytestmark = pytest.mark.usefixtures("one_thread")


def lora(
    model: Any,
    layers: list[int] | None,
    targets: Any = ("q_proj", "v_proj", "up_proj"),
    **extra: Any,
) -> Any:
    # init_lora_weights=False: adapters that change the output from the start, so the
    # adapted model and the reference differ and a mixed-up pass would show
    config = LoraConfig(r=4, target_modules=list(targets), layers_to_transform=layers,
                        init_lora_weights=False, **extra)  # fmt: skip
    return get_peft_model(model, config)


def padded_batch(vocab: int) -> tuple[dict[str, torch.Tensor], nsc_loss.Positions]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return batch, nsc_loss.positions(labels, mask, "response")


reference_suffix_logp = reference.suffix_logp


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_the_top_layers_pass_gives_the_full_reference_pass_log_probs(kind, monkeypatch):
    torch.manual_seed(0)
    model = lora(AutoModelForCausalLM.from_config(CONFIGS[kind]()), layers=[2, 3]).train()
    live = LiveReference(model, copy_weights=False)
    assert live.suffix is not None and live.suffix.start == 2
    batch, pos = padded_batch(SIZES["vocab_size"])
    full = live.logp(batch, pos)  # nothing captured: the full pass
    with torch.no_grad(), model.disable_adapter():
        model.eval()
        expected = model_logp(model, batch, pos.keep)[pos.kl]
        model.train()
    torch.testing.assert_close(full, expected, atol=0, rtol=0)
    used = []
    monkeypatch.setattr(
        reference, "suffix_logp", lambda *a: used.append(1) or reference_suffix_logp(*a)
    )
    with live.capturing():
        adapted = model_logp(model, batch, pos.keep)[pos.kl]
    fast = live.logp(batch, pos)
    assert used == [1] and model.training  # the shortcut ran; the training flag is back
    assert fast.shape == full.shape == (int(pos.kl.sum()), SIZES["vocab_size"])
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    assert (adapted - full).abs().max() > 1e-2  # the adapters do change the model
    live.logp(batch, pos)  # a record serves one call: this one is the full pass again
    assert used == [1]


def test_the_shortcut_follows_the_training_forward_with_gradients():
    """Captured in a forward with autograd on (as in training), fed to a no-grad pass."""
    torch.manual_seed(0)
    model = lora(AutoModelForCausalLM.from_config(CONFIGS["llama"]()), layers=[3]).train()
    live = LiveReference(model, copy_weights=False)
    batch, pos = padded_batch(SIZES["vocab_size"])
    with live.capturing():
        logp = model_logp(model, batch, pos.keep)
    assert logp.requires_grad
    fast = live.logp(batch, pos)
    assert not fast.requires_grad
    torch.testing.assert_close(fast, live.logp(batch, pos), atol=1e-5, rtol=0)


def test_a_record_of_another_batch_shape_is_not_used():
    torch.manual_seed(0)
    model = lora(AutoModelForCausalLM.from_config(CONFIGS["llama"]()), layers=[2, 3])
    live = LiveReference(model, copy_weights=False)
    batch, pos = padded_batch(SIZES["vocab_size"])
    with live.capturing():
        model_logp(model, {k: v[:2] for k, v in batch.items()}, pos.keep)
    torch.testing.assert_close(live.logp(batch, pos), live.logp(batch, pos), atol=0, rtol=0)


def test_what_the_shortcut_does_not_recognise_takes_the_full_pass():
    def llama() -> Any:
        return AutoModelForCausalLM.from_config(CONFIGS["llama"]())

    every_layer = lora(llama(), layers=None)
    assert LiveReference(every_layer, copy_weights=False).suffix is None
    from_zero = lora(llama(), layers=[0, 3])
    assert LiveReference(from_zero, copy_weights=False).suffix is None
    # a trained or adapted embedding changes what enters layer F
    saved = lora(llama(), layers=[3], modules_to_save=["embed_tokens"])
    assert reference.adapted_suffix(saved) is None
    tokens = lora(llama(), layers=[3], trainable_token_indices=[1, 2])
    assert reference.adapted_suffix(tokens) is None
    top = lora(llama(), layers=[3])
    assert LiveReference(top, copy_weights=False, from_layer=False).suffix is None
    assert LiveReference(llama(), copy_weights=True).suffix is None  # full fine-tuning
    gpt2 = GPT2Config(vocab_size=97, n_embd=32, n_layer=4, n_head=4, n_positions=64)
    other = lora(AutoModelForCausalLM.from_config(gpt2), layers=[3], targets=("c_attn",))
    assert reference.adapted_suffix(other) is None  # not a type known to be exact
    live = LiveReference(other, copy_weights=False)
    with live.capturing():  # a no-op without a suffix
        pass
    assert live._captured is None
