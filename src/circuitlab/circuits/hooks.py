"""Per-head `z` hooks: read every layer's head outputs, or overwrite chosen heads.

Both see `z` (the attention output projection's input, see `core.sites`) split by head,
[batch, seq, n_heads, head_dim]. They are `core.sites.hooked` with head-shaped values, so
hooks are removed when the `with` block ends, also on errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from circuitlab.core.sites import Hook, Sites, attn_z, hooked


@dataclass(frozen=True)
class HeadEdit:
    """Replace some heads' `z` in one layer.

    mask:   [rows or 1, n_heads] bool, which heads to overwrite in which batch row.
    values: broadcastable to [rows, seq, n_heads, head_dim]: what to write there.
    A row-wise mask lets one forward pass ablate a different head in each copy of a batch.
    """

    mask: torch.Tensor
    values: torch.Tensor


@contextmanager
def reading_z(sites: Sites, on_z: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call `on_z(layer, z)` with every layer's `z` [batch, seq, n_heads, head_dim]."""

    def reader(layer: int) -> Hook:
        def hook(z: torch.Tensor) -> None:
            on_z(layer, sites.split_heads(z))

        return hook

    with hooked(sites, {attn_z(layer): reader(layer) for layer in range(sites.n_layers)}):
        yield


@contextmanager
def editing_z(sites: Sites, edits: Mapping[int, HeadEdit]) -> Iterator[None]:
    """Overwrite heads' `z` as `edits` (layer -> HeadEdit) says, for the forward passes inside."""

    def editor(edit: HeadEdit) -> Hook:
        def hook(z: torch.Tensor) -> torch.Tensor:
            heads = sites.split_heads(z)
            mask = edit.mask.to(z.device)[:, None, :, None]
            new = torch.where(mask, edit.values.to(z.device, z.dtype), heads)
            return new.reshape(z.shape)

        return hook

    with hooked(sites, {attn_z(layer): editor(edit) for layer, edit in edits.items()}):
        yield
