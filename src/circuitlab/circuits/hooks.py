"""Forward pre-hooks on the attention output projections: read or overwrite per-head `z`.

Both kinds of hook see `z` as [batch, seq, n_heads, head_dim] (see `arch`). Hooks are always
removed when the `with` block ends, also on errors, so a model is never left modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitlab.circuits.arch import Layout, out_proj


@dataclass(frozen=True)
class HeadEdit:
    """Replace some heads' `z` in one layer.

    mask:   [rows or 1, n_heads] bool, which heads to overwrite in which batch row.
    values: broadcastable to [rows, seq, n_heads, head_dim]: what to write there.
    A row-wise mask lets one forward pass ablate a different head in each copy of a batch.
    """

    mask: torch.Tensor
    values: torch.Tensor


def _split(z: torch.Tensor, lay: Layout) -> torch.Tensor:
    return z.view(*z.shape[:-1], lay.n_heads, lay.head_dim)


@contextmanager
def reading_z(
    model: nn.Module, lay: Layout, on_z: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call `on_z(layer, z)` with every layer's `z` [batch, seq, n_heads, head_dim]."""

    def hook_for(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            on_z(layer, _split(args[0], lay))

        return hook

    with ExitStack() as stack:
        for layer in range(lay.n_layers):
            handle = out_proj(model, lay, layer).register_forward_pre_hook(hook_for(layer))
            stack.callback(handle.remove)
        yield


@contextmanager
def editing_z(model: nn.Module, lay: Layout, edits: Mapping[int, HeadEdit]) -> Iterator[None]:
    """Overwrite heads' `z` as `edits` (layer -> HeadEdit) says, for the forward passes inside."""

    def hook_for(edit: HeadEdit) -> Callable[..., tuple[Any, ...]]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            z = _split(args[0], lay)
            mask = edit.mask.to(z.device)[:, None, :, None]
            new = torch.where(mask, edit.values.to(z.device, z.dtype), z)
            return (new.reshape(args[0].shape), *args[1:])

        return hook

    with ExitStack() as stack:
        for layer, edit in edits.items():
            handle = out_proj(model, lay, layer).register_forward_pre_hook(hook_for(edit))
            stack.callback(handle.remove)
        yield
