"""Choosing where tensors live: the best available accelerator unless the user says otherwise."""

from __future__ import annotations

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
