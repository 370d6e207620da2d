"""Index arithmetic on 2D grids for the local 2D pattern: raster <-> block-raster order and the
gather tables of each query block's memory window (T2T ``masked_local_attention_2d``,
``make_2d_block_raster_mask``, ``right_shift_blockwise``).

Block-raster order: query blocks of shape ``query_shape`` in raster order, the pixels inside a
block in raster order.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["block_raster_coords", "raster_to_block_raster", "block_raster_to_raster",
           "local2d_tables", "local2d_flanges"]


def block_raster_coords(height: int, width: int, query_shape: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid (row, column) of each block-raster sequence position, two ``(H*W,)`` long tensors."""
    qh, qw = query_shape
    blocks_x = width // qw
    p = torch.arange(height * width)
    block, inner = p // (qh * qw), p % (qh * qw)
    y = (block // blocks_x) * qh + inner // qw
    x = (block % blocks_x) * qw + inner % qw
    return y, x


def raster_to_block_raster(x: torch.Tensor, height: int, width: int,
                           query_shape: tuple[int, int]) -> torch.Tensor:
    """Reorder dim 1 of ``x`` ``(B, H*W, ...)`` from raster to block-raster order."""
    y_idx, x_idx = block_raster_coords(height, width, query_shape)
    return x[:, (y_idx * width + x_idx).to(x.device)]


def block_raster_to_raster(x: torch.Tensor, height: int, width: int,
                           query_shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`raster_to_block_raster`."""
    y_idx, x_idx = block_raster_coords(height, width, query_shape)
    out = torch.empty_like(x)
    out[:, (y_idx * width + x_idx).to(x.device)] = x
    return out


@functools.lru_cache(maxsize=64)
def local2d_tables(height: int, width: int, query_shape: tuple[int, int],
                   memory_flange: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather tables of masked local 2D attention.

    Returns ``index`` ``(num_blocks, M)`` long - the sequence position of each memory slot
    (``M = (qh+fh)*(qw+2fw)``, slots in raster order over the memory window; out-of-image slots
    point at 0) - and ``mask`` ``(num_blocks, qh*qw, M)`` bool.
    """
    qh, qw = query_shape
    fh, fw = memory_flange
    blocks_y, blocks_x = height // qh, width // qw
    mh, mw = qh + fh, qw + 2 * fw
    # Sequence position of every grid cell.
    position = raster_to_block_raster(torch.arange(height * width).view(1, height * width),
                                      height, width, query_shape)
    seq_of_cell = torch.empty(height * width, dtype=torch.long)
    seq_of_cell[position.view(-1)] = torch.arange(height * width)
    seq_of_cell = seq_of_cell.view(height, width)

    by = torch.arange(blocks_y).repeat_interleave(blocks_x)  # (nb,)
    bx = torch.arange(blocks_x).repeat(blocks_y)
    my = torch.arange(mh).repeat_interleave(mw)  # (M,) memory-window rows
    mx = torch.arange(mw).repeat(mh)
    ky = by[:, None] * qh - fh + my[None, :]  # (nb, M) grid rows of memory slots
    kx = bx[:, None] * qw - fw + mx[None, :]
    inside = (ky >= 0) & (ky < height) & (kx >= 0) & (kx < width)
    index = seq_of_cell[ky.clamp(0, height - 1), kx.clamp(0, width - 1)]
    index = torch.where(inside, index, torch.zeros_like(index))

    # The visibility inside a memory window is the same for every block (T2T's block raster mask).
    qy = torch.arange(qh).repeat_interleave(qw)  # (Q,) query row inside its block
    qx = torch.arange(qw).repeat(qh)
    top_flange = my[None, :] < fh
    left_flange = (my[None, :] >= fh) & (mx[None, :] < fw)
    in_block = (my[None, :] >= fh) & (mx[None, :] >= fw) & (mx[None, :] < fw + qw)
    key_raster = (my[None, :] - fh) * qw + (mx[None, :] - fw)
    query_raster = (qy * qw + qx)[:, None]
    window = top_flange | left_flange | (in_block & (key_raster <= query_raster))  # (Q, M)
    mask = window[None, :, :] & inside[:, None, :]
    return index, mask


@functools.lru_cache(maxsize=64)
def local2d_flanges(height: int, width: int, query_shape: tuple[int, int],
                    memory_flange: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """For each query block, the sequence positions of its memory slots outside the block that
    some query of the block sees: the top and left flange, inside the image. These are all in
    earlier blocks and every query of the block sees all of them (T2T's block raster mask); the
    right flange (a later block) is never visible and is left out. One ``(F_b,)`` long tensor per
    block, slots in raster order over the memory window."""
    qh, qw = query_shape
    fh, fw = memory_flange
    index, mask = local2d_tables(height, width, query_shape, memory_flange)
    mh, mw = qh + fh, qw + 2 * fw
    my = torch.arange(mh).repeat_interleave(mw)  # (M,)
    mx = torch.arange(mw).repeat(mh)
    in_block = (my >= fh) & (mx >= fw) & (mx < fw + qw)
    visible = mask.any(dim=1) & ~in_block  # (nb, M): flange slots seen by the block's queries
    return tuple(index[b][visible[b]] for b in range(index.shape[0]))
