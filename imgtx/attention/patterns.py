"""Attention patterns: *what* each query may attend to.

A pattern is a small frozen dataclass that owns everything the core does differently for it, so
adding a pattern touches only the file that defines it (here: the base class and the patterns of
sequences; :mod:`imgtx.attention.windows`: the non-causal windows of a token grid):

* ``dense_mask(num_queries, num_keys)`` - the obviously-correct definition as an ``(Nq, Nk)``
  boolean matrix (True = visible). Only the reference backend and the tests build it.
* ``dense_bias(bias)`` - an additive bias in that dense layout (window patterns take a
  window-local bias and expand it here).
* ``blocks(q, k, v, bias)`` - the pattern as small dense blocks
  (:class:`imgtx.attention.blocks.Blocks`) for the fast backends, so that no backend ever builds
  an N x N mask for a local pattern.
* ``new_cache(...)`` - the KV cache for incremental decoding (causal patterns only).

Sequence layouts:

* ``Local1D``, ``Causal``, ``Full``: positions in the order given.
* ``Local2D``: positions on an ``(height, width)`` grid in *block-raster* order - query blocks of
  shape ``query_shape`` in raster order, pixels inside a block in raster order (T2T
  ``masked_local_attention_2d``). ``raster_to_block_raster`` / ``block_raster_to_raster`` convert.
* ``Window`` (:mod:`imgtx.attention.windows`): tokens of an ``(height, width)`` grid in ordinary
  raster order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgtx.attention.blocks import Blocks, causal_mask, fold_bias, one_block
from imgtx.attention.cache import CausalCache, KVCache, Local1DCache, Local2DCache
from imgtx.attention.grid import (
    block_raster_coords,
    block_raster_to_raster,
    local2d_tables,
    raster_to_block_raster,
)

__all__ = [
    "Pattern",
    "Full",
    "Causal",
    "Local1D",
    "Local2D",
    "raster_to_block_raster",  # re-exported from imgtx.attention.grid
    "block_raster_to_raster",
]


class Pattern:
    """Base class of attention patterns."""

    #: True when a query never sees a later position (usable for autoregressive decoding).
    causal: bool = False

    def dense_mask(self, num_queries: int, num_keys: int) -> torch.Tensor:
        """``(Nq, Nk)`` bool, True where key j is visible to query i."""
        raise NotImplementedError

    def check_length(self, num_queries: int, num_keys: int) -> None:
        """Raise a ValueError a user can act on when the lengths do not fit the pattern."""
        if num_queries != num_keys:
            raise ValueError(
                f"{type(self).__name__} attention needs as many keys as queries, got "
                f"{num_queries} queries and {num_keys} keys; use Full() for cross-attention"
            )

    def check_grid_length(self, num_queries: int, num_keys: int, unit: str) -> None:
        """:meth:`check_length` of a pattern on a ``height x width`` grid of ``length``
        positions: self-attention over exactly the whole grid."""
        Pattern.check_length(self, num_queries, num_keys)
        if num_queries != self.length:
            raise ValueError(
                f"{type(self).__name__} pattern is for a {self.height}x{self.width} grid "
                f"({self.length} {unit}) but got a sequence of {num_queries}"
            )

    def dense_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """An additive bias in the dense ``(..., Nq, Nk)`` layout (here: as given)."""
        return bias

    def blocks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None = None) -> Blocks:
        """This pattern as dense attention over small blocks: q ``(B, H, Nq, E)``, k/v
        ``(B, H, Nk, E)``, bias as for :func:`imgtx.attention.attend`. Lengths are checked."""
        raise NotImplementedError(f"{type(self).__name__} has no blocked layout")

    def new_cache(self, batch: int, heads: int, head_dim: int, length: int,
                  device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> KVCache:
        """An empty KV cache for decoding ``length`` positions one at a time."""
        raise ValueError(f"incremental decoding needs a causal pattern (Causal, Local1D, "
                         f"Local2D); {type(self).__name__} sees future positions")


@dataclass(frozen=True)
class Full(Pattern):
    """Every query sees every key. Also the cross-attention pattern (Nq may differ from Nk)."""

    def dense_mask(self, num_queries: int, num_keys: int) -> torch.Tensor:
        return torch.ones(num_queries, num_keys, dtype=torch.bool)

    def check_length(self, num_queries: int, num_keys: int) -> None:
        pass

    def blocks(self, q, k, v, bias=None):
        return one_block(q, k, v, bias, causal=False)


@dataclass(frozen=True)
class Causal(Pattern):
    """Key j is visible to query i iff j <= i."""

    causal = True

    def dense_mask(self, num_queries: int, num_keys: int) -> torch.Tensor:
        i = torch.arange(num_queries)[:, None]
        j = torch.arange(num_keys)[None, :]
        return j <= i

    def blocks(self, q, k, v, bias=None):
        return one_block(q, k, v, bias, causal=True)

    def new_cache(self, batch, heads, head_dim, length, device="cpu", dtype=torch.float32):
        return CausalCache(batch, heads, head_dim, length, device, dtype)


@dataclass(frozen=True)
class Local1D(Pattern):
    """Masked local 1D attention (T2T ``masked_local_attention_1d``).

    Query i lies in block ``k = i // block``; key j is visible iff ``(k-1)*block <= j <= i``: the
    whole previous block plus the current block up to i. Lengths need not divide the block.
    """

    block: int
    causal = True

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"Local1D block must be >= 1, got {self.block}")

    def dense_mask(self, num_queries: int, num_keys: int) -> torch.Tensor:
        i = torch.arange(num_queries)[:, None]
        j = torch.arange(num_keys)[None, :]
        return (j <= i) & (j >= (i // self.block - 1) * self.block)

    def block_mask(self) -> torch.Tensor:
        """``(b, 2b)`` bool: row r = query offset in its block, column c = key offset in the
        ``[previous block | current block]`` memory. Identical for every block."""
        b = self.block
        r = torch.arange(b)[:, None]
        c = torch.arange(2 * b)[None, :]
        return (c < b) | (c - b <= r)

    def blocks(self, q, k, v, bias=None):
        b, h, n, e = q.shape
        blk, g = self.block, b * h
        if n <= 2 * blk:  # at most two blocks: plain causal attention
            return one_block(q, k, v, bias, causal=True)
        nb = math.ceil(n / blk)  # >= 3 here
        pad = nb * blk - n

        def padded(t: torch.Tensor) -> torch.Tensor:
            # (B, H, nb*blk, E); copies only for a ragged last block or a non-contiguous input.
            return F.pad(t, (0, 0, 0, pad)) if pad else t.contiguous()

        qp, kp, vp = padded(q), padded(k), padded(v)
        qb = qp.view(g, nb, blk, e)

        # Blocks 1.. attend to [previous | current] block: overlapping windows, a view of k (no
        # copy), and one (b, 2b) mask shared by every block (a 2-D mask keeps SDPA on its fused
        # CPU kernel). Block 0 has no previous block: it is plain causal attention, the head.
        def windows(t: torch.Tensor) -> torch.Tensor:
            return t.unfold(2, 2 * blk, blk).transpose(-1, -2).reshape(g, nb - 1, 2 * blk, e)

        def first(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, :blk].reshape(g, 1, blk, e)

        mask = self.block_mask().to(q.device)  # (b, 2b)
        bias_blocks = head_bias = head_mask = None
        if bias is not None:
            qi = torch.arange(blk, nb * blk, device=q.device).view(nb - 1, blk).clamp(max=n - 1)
            kj = (torch.arange(nb - 1, device=q.device)[:, None] * blk
                  + torch.arange(2 * blk, device=q.device)[None, :]).clamp(max=n - 1)
            bias_blocks = fold_bias(bias[..., qi[:, :, None], kj[:, None, :]], b, h)
            head_bias = fold_bias(bias[..., :blk, :blk].unsqueeze(-3), b, h)
            head_mask = causal_mask(blk, blk, q.device)
        head = Blocks(qb[:, :1], first(kp), first(vp), head_mask, head_bias, bias is None,
                      lambda out: out)

        def restore(out: torch.Tensor) -> torch.Tensor:
            return out.reshape(b, h, nb * blk, e)[:, :, :n]

        return Blocks(qb[:, 1:], windows(kp), windows(vp), mask, bias_blocks, False, restore,
                      head)

    def new_cache(self, batch, heads, head_dim, length, device="cpu", dtype=torch.float32):
        return Local1DCache(self.block, batch, heads, head_dim, length, device, dtype)


@dataclass(frozen=True)
class Local2D(Pattern):
    """Masked local 2D attention on an ``(height, width)`` grid, in block-raster order.

    Each ``query_shape = (qh, qw)`` block attends to a memory of the block itself plus a flange:
    ``fh`` rows above spanning ``qw + 2*fw`` columns, and ``fw`` columns to the left. Inside the
    block, attention is causal in raster order; the right flange (a later block) is never visible.
    Source: T2T ``masked_local_attention_2d`` / ``make_2d_block_raster_mask``; T2T masks the
    out-of-image flange only through zero padding, here it is an explicit mask.
    """

    height: int
    width: int
    query_shape: tuple[int, int]
    memory_flange: tuple[int, int]
    causal = True

    def __post_init__(self) -> None:
        qh, qw = self.query_shape
        fh, fw = self.memory_flange
        if qh < 1 or qw < 1 or fh < 0 or fw < 0:
            raise ValueError(f"bad Local2D shapes: query {self.query_shape}, flange "
                             f"{self.memory_flange}")
        if self.height % qh or self.width % qw:
            raise ValueError(
                f"Local2D grid {self.height}x{self.width} is not divisible by the query block "
                f"{qh}x{qw}; pick a query_shape that divides the grid (for an RGB image the grid "
                f"is H x (W*3))"
            )

    @property
    def length(self) -> int:
        return self.height * self.width

    @property
    def block_grid(self) -> tuple[int, int]:
        """Number of query blocks along (rows, columns)."""
        return self.height // self.query_shape[0], self.width // self.query_shape[1]

    @property
    def memory_shape(self) -> tuple[int, int]:
        qh, qw = self.query_shape
        fh, fw = self.memory_flange
        return qh + fh, qw + 2 * fw

    def check_length(self, num_queries: int, num_keys: int) -> None:
        self.check_grid_length(num_queries, num_keys, "positions")

    def dense_mask(self, num_queries: int, num_keys: int) -> torch.Tensor:
        self.check_length(num_queries, num_keys)
        qh, qw = self.query_shape
        fh, fw = self.memory_flange
        y, x = block_raster_coords(self.height, self.width, self.query_shape)
        yq, xq = y[:, None], x[:, None]
        yk, xk = y[None, :], x[None, :]
        top = (yq // qh) * qh  # first row of the query's block
        left = (xq // qw) * qw  # first column of the query's block
        in_top_flange = (yk >= top - fh) & (yk < top) & (xk >= left - fw) & (xk < left + qw + fw)
        in_rows = (yk >= top) & (yk < top + qh)
        in_left_flange = in_rows & (xk >= left - fw) & (xk < left)
        same_block = in_rows & (xk >= left) & (xk < left + qw)
        # Inside a block, raster order == sequence order (blocks are contiguous in the sequence).
        i = torch.arange(self.length)
        causal_in_block = same_block & (i[None, :] <= i[:, None])
        return in_top_flange | in_left_flange | causal_in_block

    def block_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather tables for the blocked backends and the cache: ``index`` ``(num_blocks, M)``
        and ``mask`` ``(num_blocks, qh*qw, M)``, see :func:`imgtx.attention.grid.local2d_tables`.
        """
        return local2d_tables(self.height, self.width, self.query_shape, self.memory_flange)

    def blocks(self, q, k, v, bias=None):
        b, h, n, e = q.shape
        g = b * h
        index, mask = (t.to(q.device) for t in self.block_tables())
        nb, m = index.shape
        qn = n // nb
        qb = q.reshape(g, nb, qn, e)
        kb = k.reshape(g, n, e)[:, index.view(-1)].view(g, nb, m, e)
        vb = v.reshape(g, n, e)[:, index.view(-1)].view(g, nb, m, e)
        bias_blocks = None
        if bias is not None:
            qi = torch.arange(n, device=q.device).view(nb, qn)
            bias_blocks = fold_bias(bias[..., qi[:, :, None], index[:, None, :]], b, h)
        return Blocks(qb, kb, vb, mask, bias_blocks, False, lambda out: out.reshape(b, h, n, e))

    def new_cache(self, batch, heads, head_dim, length, device="cpu", dtype=torch.float32):
        if length != self.length:
            raise ValueError(f"a Local2D cache decodes the whole {self.length}-position grid, "
                             f"got length {length}")
        return Local2DCache(self, batch, heads, head_dim, device, dtype)
