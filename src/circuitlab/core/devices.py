"""Choosing where tensors live: the best available accelerator unless the user says otherwise."""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

import torch

from circuitlab.core.errors import CircuitlabError

CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    if name not in CHOICES and not name.startswith("cuda:"):
        raise CircuitlabError(f"unknown device {name!r}: use one of {', '.join(CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitlabError(f"device {name!r} was asked for but CUDA is not available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CircuitlabError("device 'mps' was asked for but MPS is not available here")
    return torch.device(name)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = 2**31 - 1


@cache
def reuse_freed_memory() -> bool:
    """Let glibc keep large freed blocks for reuse; True if it took the setting.

    glibc serves every allocation above 32 MB with a fresh mmap and unmaps it again on free,
    so a training step that makes and drops [tokens, vocab] tensors (a 49k-token vocabulary
    is 82 MB for 420 positions) pays the kernel for zeroed pages every time. On the 2-core
    CPU that was about a sixth of a full fine-tuning step of SmolLM2-135M and a third of what
    NSC-SFT's live reference added (benchmarks/bench_nsc_sft.py). With the mmap and trim
    thresholds raised, freed blocks stay in the heap for the next step; the process keeps
    its peak memory, as it would under jemalloc or tcmalloc. Does nothing where the C
    library is not glibc, or where the user set MALLOC_MMAP_THRESHOLD_ themselves.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        settings = ((_M_MMAP_THRESHOLD, _KEEP), (_M_TRIM_THRESHOLD, _KEEP), (_M_TOP_PAD, 1 << 26))
        return all(libc.mallopt(option, value) == 1 for option, value in settings)
    except (OSError, AttributeError):  # no glibc (musl, or a libc without mallopt)
        return False
