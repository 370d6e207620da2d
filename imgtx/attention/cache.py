"""KV caches for incremental (one position at a time) decoding.

``cache.step(q, k, v)`` appends the new position's key and value and returns its attention output,
equal to the full forward at that position. Each pattern keeps only what it can still see:

* ``Causal``: every key so far, O(N) memory, O(N) work per step.
* ``Local1D``: ``2*block`` slots (previous and current block): O(b) memory and work per step,
  so sampling N positions costs O(N*b) rather than O(N^2). (T2T had no cache and re-ran the
  whole model per subpixel.)
* ``Local2D``: keys indexed by block-raster position; each step gathers only its block's memory
  window (``(qh+fh)*(qw+2fw)`` slots) - O(M) work per step.

Each pattern picks its cache (``Pattern.new_cache``). Shapes: q, k, v ``(B, H, 1, E)``; buffers
``(B, H, slots, E)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

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

    def _check(self, q: torch.Tensor) -> None:
        if q.shape[2] != 1:
            raise ValueError(f"KV cache steps take one position at a time, got {q.shape[2]}")
        if self.position >= self.length:
            raise IndexError(f"KV cache is full: all {self.length} positions were decoded")

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             scale: float | None = None) -> torch.Tensor:
        """Append position ``self.position`` and return its output ``(B, H, 1, E)``."""
        raise NotImplementedError

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                visible: torch.Tensor, scale: float | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible.view(1, -1),
                                              scale=scale)


class CausalCache(KVCache):
    """Keeps every key: plain causal attention."""

    def __init__(self, batch, heads, head_dim, length, device, dtype) -> None:
        super().__init__(batch, heads, head_dim, length, length, device, dtype)

    def step(self, q, k, v, scale=None):
        self._check(q)
        p = self.position
        self.keys[:, :, p] = k[:, :, 0]
        self.values[:, :, p] = v[:, :, 0]
        self.position += 1
        return F.scaled_dot_product_attention(q, self.keys[:, :, : p + 1],
                                              self.values[:, :, : p + 1], scale=scale)


class Local1DCache(KVCache):
    """Two blocks of slots: ``[0, b)`` holds the previous block, ``[b, 2b)`` the current one.

    Position p goes to slot ``b + p % b``; when a new block starts, the current block's slots are
    copied over the previous block's (one copy per ``b`` steps). What p sees is then the
    contiguous slice ``[0 or b, b + p % b]``, attended without a mask.
    """

    def __init__(self, block, batch, heads, head_dim, length, device, dtype) -> None:
        super().__init__(batch, heads, head_dim, 2 * block, length, device, dtype)
        self.block = block

    def step(self, q, k, v, scale=None):
        self._check(q)
        p, b = self.position, self.block
        offset = p % b
        if offset == 0 and p > 0:  # a new block: the current one becomes the previous one
            self.keys[:, :, :b] = self.keys[:, :, b:]
            self.values[:, :, :b] = self.values[:, :, b:]
        self.keys[:, :, b + offset] = k[:, :, 0]
        self.values[:, :, b + offset] = v[:, :, 0]
        self.position += 1
        first = 0 if p >= b else b  # block 0 has no previous block
        end = b + offset + 1
        return F.scaled_dot_product_attention(q, self.keys[:, :, first:end],
                                              self.values[:, :, first:end], scale=scale)


class Local2DCache(KVCache):
    """Keys by block-raster position; each step reads only its block's memory window."""

    def __init__(self, pattern: Local2D, batch, heads, head_dim, device, dtype) -> None:
        super().__init__(batch, heads, head_dim, pattern.length, pattern.length, device, dtype)
        index, mask = pattern.block_tables()
        self.index, self.mask = index.to(device), mask.to(device)
        self.block_size = pattern.query_shape[0] * pattern.query_shape[1]

    def step(self, q, k, v, scale=None):
        self._check(q)
        p = self.position
        self.keys[:, :, p] = k[:, :, 0]
        self.values[:, :, p] = v[:, :, 0]
        self.position += 1
        block, row = divmod(p, self.block_size)
        index = self.index[block]  # (M,) sequence positions of this block's memory
        return self._attend(q, self.keys[:, :, index], self.values[:, :, index],
                            self.mask[block, row], scale)


def make_cache(pattern: Pattern, batch: int, heads: int, head_dim: int, length: int,
               device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> KVCache:
    """The right cache for ``pattern`` and a ``length``-long decode: ``pattern.new_cache``."""
    return pattern.new_cache(batch, heads, head_dim, length, device, dtype)
