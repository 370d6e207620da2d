"""KV caches for incremental (one position at a time) decoding.

``cache.append(k, v)`` stores the new position's key and value and returns the keys and values it
may see as two views ``(B, H, M, E)`` - always the whole visible set and nothing else, so a step
attends to them without a mask. ``cache.step(q, k, v)`` is append plus that attention, equal to
the full forward at that position (keys in another order; softmax attention does not depend on
the order of its keys). Each pattern keeps only what it can still see:

* ``Causal``: every key so far, O(N) memory, O(N) work per step.
* ``Local1D``: ``2*block`` slots (previous and current block): O(b) memory and work per step,
  so sampling N positions costs O(N*b) rather than O(N^2). (T2T had no cache and re-ran the
  whole model per subpixel.)
* ``Local2D``: all keys by block-raster position, plus a per-block window gathered once when a
  block starts: the block's visible flange (top rows and left columns that lie inside the image;
  the right flange, never visible, is not gathered) followed by the block's own positions. Query
  r of a block sees the first ``flange + r + 1`` slots of that window. O(M) work per step.

Writes go into buffers allocated once (no per-step allocation of the cache). Shapes: k, v
``(B, H, E)`` for ``append``; q, k, v ``(B, H, 1, E)`` for ``step``; buffers ``(B, H, slots, E)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from imgtx.attention.grid import local2d_flanges

if TYPE_CHECKING:
    from imgtx.attention.patterns import Local2D, Pattern

__all__ = ["KVCache", "CausalCache", "Local1DCache", "Local2DCache", "make_cache"]


class KVCache:
    """Base class. ``position`` is the index of the next position to be decoded."""

    def __init__(self, batch: int, heads: int, head_dim: int, slots: int, length: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        self.length = length
        self.position = 0
        self.keys = torch.zeros(batch, heads, slots, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)

    @property
    def slots(self) -> int:
        """How many keys the cache holds at most."""
        return self.keys.shape[2]

    def _next(self) -> int:
        """The position being appended; raises once all ``length`` positions are decoded."""
        p = self.position
        if p >= self.length:
            raise IndexError(f"KV cache is full: all {self.length} positions were decoded")
        self.position = p + 1
        return p

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the key and value ``(B, H, E)`` of position ``self.position`` and return the
        keys and values it sees, ``(B, H, M, E)`` views of the cache's buffers."""
        raise NotImplementedError

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             scale: float | None = None) -> torch.Tensor:
        """Append position ``self.position`` and return its output ``(B, H, 1, E)``."""
        if q.shape[2] != 1:
            raise ValueError(f"KV cache steps take one position at a time, got {q.shape[2]}")
        keys, values = self.append(k[:, :, 0], v[:, :, 0])
        return F.scaled_dot_product_attention(q, keys, values, scale=scale)


class CausalCache(KVCache):
    """Keeps every key: plain causal attention."""

    def __init__(self, batch, heads, head_dim, length, device, dtype) -> None:
        super().__init__(batch, heads, head_dim, length, length, device, dtype)

    def append(self, k, v):
        p = self._next()
        self.keys[:, :, p] = k
        self.values[:, :, p] = v
        return self.keys[:, :, : p + 1], self.values[:, :, : p + 1]


class Local1DCache(KVCache):
    """Two blocks of slots: ``[0, b)`` holds the previous block, ``[b, 2b)`` the current one.

    Position p goes to slot ``b + p % b``; when a new block starts, the current block's slots are
    copied over the previous block's (one copy per ``b`` steps). What p sees is then the
    contiguous slice ``[0 or b, b + p % b]``.
    """

    def __init__(self, block, batch, heads, head_dim, length, device, dtype) -> None:
        super().__init__(batch, heads, head_dim, 2 * block, length, device, dtype)
        self.block = block

    def append(self, k, v):
        p, b = self._next(), self.block
        offset = p % b
        if offset == 0 and p > 0:  # a new block: the current one becomes the previous one
            self.keys[:, :, :b] = self.keys[:, :, b:]
            self.values[:, :, :b] = self.values[:, :, b:]
        self.keys[:, :, b + offset] = k
        self.values[:, :, b + offset] = v
        first = 0 if p >= b else b  # block 0 has no previous block
        end = b + offset + 1
        return self.keys[:, :, first:end], self.values[:, :, first:end]


class Local2DCache(KVCache):
    """All keys by block-raster position (``keys``/``values``), and the current block's window
    (``window_keys``/``window_values``): its visible flange, gathered when the block starts, then
    its own positions as they are decoded."""

    def __init__(self, pattern: Local2D, batch, heads, head_dim, device, dtype) -> None:
        super().__init__(batch, heads, head_dim, pattern.length, pattern.length, device, dtype)
        self.flanges = [f.to(device) for f in local2d_flanges(
            pattern.height, pattern.width, pattern.query_shape, pattern.memory_flange)]
        self.block_size = pattern.query_shape[0] * pattern.query_shape[1]
        width = max(len(f) for f in self.flanges) + self.block_size
        self.window_keys = torch.zeros(batch, heads, width, head_dim, device=device, dtype=dtype)
        self.window_values = torch.zeros_like(self.window_keys)
        self.flange = 0  # visible flange slots of the current block

    def append(self, k, v):
        p = self._next()
        block, row = divmod(p, self.block_size)
        if row == 0:  # a new block: gather its flange (earlier blocks only) once
            index = self.flanges[block]
            self.flange = len(index)
            self.window_keys[:, :, : self.flange] = self.keys.index_select(2, index)
            self.window_values[:, :, : self.flange] = self.values.index_select(2, index)
        self.keys[:, :, p] = k
        self.values[:, :, p] = v
        slot = self.flange + row
        self.window_keys[:, :, slot] = k
        self.window_values[:, :, slot] = v
        return self.window_keys[:, :, : slot + 1], self.window_values[:, :, : slot + 1]


def make_cache(pattern: Pattern, batch: int, heads: int, head_dim: int, length: int,
               device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> KVCache:
    """The right cache for ``pattern`` and a ``length``-long decode: ``pattern.new_cache``."""
    return pattern.new_cache(batch, heads, head_dim, length, device, dtype)
