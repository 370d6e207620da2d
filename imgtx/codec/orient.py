"""Each tile of a large image turned its own way before it is coded.

The image's transform (:mod:`imgtx.codec.transform`) is one compromise over all of its content;
a tile's own edges and gradients have their own best reading direction for a model that reads
rows top to bottom. Tiles are coded independently (:mod:`imgtx.codec.coder`), so the encoder can
turn or mirror each full tile once more, by whichever of the 8 orientations of the square the
model codes it in the fewest bits, and record the orientation in the header (4 bits a tile,
:mod:`imgtx.codec.format`); the decoder undoes it. One teacher-forced forward pass per
orientation over every full tile. This is the per-block choice of classical codecs (WebP's
predictor per block, JPEG XL's per group) applied to a choice a fixed model leaves free.
"""

from __future__ import annotations

import numpy as np
import torch

from imgtx.codec.coder import split_tiles, tile_count
from imgtx.codec.transform import FULL_SEARCH_TILES, Transform, coded_bits

__all__ = ["default_orient", "orient_tiles", "tile_orientations"]


def default_orient(height: int, width: int, tile: int) -> bool:
    """Whether ``compress(orient="auto")`` turns the tiles of an image of this size one by one:
    more than :data:`FULL_SEARCH_TILES` tiles (smaller ones get the full search instead)."""
    return tile_count(height, width, tile) > FULL_SEARCH_TILES


def orient_tiles(pixels: np.ndarray, size: int, orientations, undo: bool = False) -> np.ndarray:
    """``pixels`` ``(H, W, 3)`` with tile ``i`` of its ``size`` grid (raster order of tiles, as
    :func:`~imgtx.codec.coder.split_tiles`) turned and mirrored by
    ``Transform(orientation=orientations[i])``, or that undone. A square tile stays in place
    whatever its orientation; tiles cut by the image's edge must have orientation 0."""
    out = np.array(pixels, copy=True)
    height, width = pixels.shape[:2]
    cols = -(-width // size)
    for index, orientation in enumerate(orientations):
        if not orientation:
            continue
        top, left = divmod(index, cols)
        top, left = top * size, left * size
        if top + size > height or left + size > width:
            raise ValueError(f"tile {index} is cut by the image's edge and cannot be turned")
        turn = Transform(orientation=int(orientation))
        region = out[top : top + size, left : left + size]
        out[top : top + size, left : left + size] = turn.undo(region) if undo else \
            turn.apply(region)
    return out


@torch.no_grad()
def tile_orientations(model, pixels: np.ndarray, one_channel: bool, batch: int = 64,
                      scales: int = 0) -> tuple[np.ndarray, float]:
    """The orientation (0-7) of each tile of ``pixels`` (already transformed) that its coded
    values cost the model the fewest bits in, with the log-scale offsets ``scales``: all 8 for
    every full tile (one forward pass each, teacher-forced), 0 for tiles cut by the image's
    edge and among equals. Returns ``((T,) uint8, bits saved against orientation 0)``."""
    size = model.config.image_size
    tiles, sizes = split_tiles(pixels, size)
    full = np.array([h == size and w == size for h, w in sizes])
    chosen = np.zeros(len(tiles), dtype=np.uint8)
    if not full.any():
        return chosen, 0.0
    square = tiles[full]
    bits = np.stack([coded_bits(model, np.stack([Transform(orientation=k).apply(t)
                                                 for t in square]),
                                [(size, size)] * len(square), one_channel, batch, scales)
                     for k in range(8)])  # (8, full tiles)
    best = bits.argmin(0)  # the first (no turn) among equals
    chosen[full] = best
    return chosen, float(bits[0].sum() - bits[best, np.arange(len(square))].sum())
