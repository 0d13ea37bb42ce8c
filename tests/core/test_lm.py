from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.lm import EMBEDDED_NAME, LoadedLM, load_lm, resolve, torch_dtype


def test_embedded_model_is_smollm2_and_completes_ioi(embedded_lm: LoadedLM) -> None:
    model, tok = embedded_lm.model, embedded_lm.tokenizer
    assert embedded_lm.name == EMBEDDED_NAME
    assert model.config.num_hidden_layers == 30
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    ids = tok("When Mary and John went to the store, John gave a drink to", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    mary, john = tok(" Mary").input_ids[0], tok(" John").input_ids[0]
    assert logits[mary] - logits[john] > 1.0


def test_gguf_is_dequantized_into_a_safetensors_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRCUITLAB_CACHE", str(tmp_path))
    first = load_lm()
    cached = list((tmp_path / "lm").glob("SmolLM2-135M-Instruct*/model.safetensors"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    second = load_lm()  # from the cache: the file is not rewritten
    assert cached[0].stat().st_mtime_ns == mtime
    a = first.model.model.embed_tokens.weight
    assert torch.equal(a, second.model.model.embed_tokens.weight)


def test_local_directory_loads(tmp_path: Path, embedded_lm: LoadedLM) -> None:
    config = LlamaConfig(
        vocab_size=embedded_lm.tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    embedded_lm.tokenizer.save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path))
    assert lm.name == tmp_path.name
    assert lm.model.config.hidden_size == 32
    assert not lm.model.training
    assert isinstance(lm.tokenizer, PreTrainedTokenizerFast)


def test_bad_specs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CircuitlabError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(CircuitlabError, match=r"config\.json"):
        resolve(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CircuitlabError, match="neither"):
        resolve(str(tmp_path / "notes.txt"))
    assert resolve("HuggingFaceTB/SmolLM2-135M") == ("hub", "HuggingFaceTB/SmolLM2-135M")


def test_dtype_names_map_to_torch_dtypes_and_others_are_clear_errors() -> None:
    assert torch_dtype("float32") is torch.float32
    assert torch_dtype("bfloat16") is torch.bfloat16
    assert torch_dtype("float16") is torch.float16
    with pytest.raises(CircuitlabError, match=r"dtype 'bf16': use float32, bfloat16, float16"):
        torch_dtype("bf16")


@pytest.mark.parametrize(
    "config",
    ["", "{not json", "{}", '{"model_type": "llama", "num_hidden_layers": "two"}'],
    ids=["empty", "not-json", "no-model-type", "wrong-type"],
)
def test_a_model_dir_with_a_broken_config_is_one_line_error(
    tmp_path: Path, embedded_lm: LoadedLM, config: str
) -> None:
    embedded_lm.tokenizer.save_pretrained(tmp_path)  # so the config is what fails
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CircuitlabError, match="cannot load model") as error:
        load_lm(str(tmp_path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("keep", [10, 1000, 100_000])
def test_a_truncated_gguf_is_one_line_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: int
) -> None:
    from circuitlab.core.lm import embedded_gguf_path

    monkeypatch.setenv("CIRCUITLAB_CACHE", str(tmp_path / "cache"))
    with embedded_gguf_path().open("rb") as handle:
        head = handle.read(keep)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(head)  # struct.error inside gguf's reader before the change
    with pytest.raises(CircuitlabError, match=r"cannot read GGUF file .*cut\.gguf") as error:
        load_lm(str(cut))
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "cache").glob("lm/cut-*"))  # nothing half-written cached
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(CircuitlabError, match="is a directory"):
        resolve(str(tmp_path / "folder.gguf"))
