"""The causal neighbourhood of a position: which earlier pixels it may read, and what a classical
predictor makes of them.

Used by :class:`imgtx.model.ImageTransformer` for ``neighbour_inputs`` (the pixels around a
position as extra inputs) and ``predictor="med"`` (values predicted relative to the LOCO-I median
edge detector), and by the anchored super-resolution decoder (:func:`offset_logits`).

Shapes: N positions, n positions being computed, B batch.
"""

from __future__ import annotations

import torch

from imgtx.attention import raster_to_block_raster
from imgtx.configs import ImageTransformerConfig

__all__ = ["NEIGHBOURS", "MED_NEIGHBOURS", "neighbour_index", "median_edge_prediction",
           "med_of_canvas", "offset_logits", "decoding_order"]

#: (row, column) offsets of the pixels ``neighbour_inputs`` feeds a position: left, two left, the
#: three above (left, centre, right) and two above. PixelCNN (van den Oord et al. 2016) and the
#: LOCO-I / JPEG-LS predictor read the same causal neighbourhood.
NEIGHBOURS = ((0, -1), (0, -2), (-1, -1), (-1, 0), (-1, 1), (-2, 0))
#: (row, pixel column) offsets of the median edge predictor's inputs: left, upper-left, upper.
#: For a categorical model they are the same channel's subpixels (three columns per pixel).
MED_NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0))


def median_edge_prediction(left: torch.Tensor, upper_left: torch.Tensor, upper: torch.Tensor,
                           has_left: torch.Tensor, has_upper: torch.Tensor) -> torch.Tensor:
    """The LOCO-I / JPEG-LS median edge detector (Weinberger, Seroussi & Sapiro 2000, eq. 2):
    ``min(a, b)`` if ``c >= max(a, b)``, ``max(a, b)`` if ``c <= min(a, b)``, else ``a + b - c``,
    for left ``a``, upper ``b`` and upper-left ``c``. On the top row it is the left pixel, in the
    first column the upper one, and mid-grey for the first pixel (0 on the scaled [-1, 1] range).

    Values are scaled pixels of any one shape; ``has_left``/``has_upper`` broadcast against
    them."""
    low, high = torch.minimum(left, upper), torch.maximum(left, upper)
    med = torch.where(upper_left >= high, low,
                      torch.where(upper_left <= low, high, left + upper - upper_left))
    edge = torch.where(has_left, left, torch.where(has_upper, upper, torch.zeros_like(left)))
    return torch.where(has_left & has_upper, med, edge)


def offset_logits(table: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Logits over the 256 values from a table over offsets ``v - centre``: ``table``
    ``(..., 511)`` (offset -255..255 at index 0..510) and ``centre`` ``(...)`` long ->
    ``(..., 256)``."""
    index = torch.arange(256, device=table.device) + 255 - centre[..., None]
    return table.gather(-1, index)


def decoding_order(config: ImageTransformerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raster, order)``, both ``(N,)``: the raster index of each model position, and the
    model position of each raster index (they differ for local 2D's block-raster order)."""
    rows, cols = config.sequence_grid
    raster = torch.arange(rows * cols)
    if config.attention == "local2d":
        raster = raster_to_block_raster(raster[None], rows, cols, config.query_shape)[0]
    order = torch.empty_like(raster)
    order[raster] = torch.arange(rows * cols)
    return raster, order


def neighbour_index(config: ImageTransformerConfig,
                    offsets: tuple[tuple[int, int], ...] = NEIGHBOURS) -> torch.Tensor:
    """``(N, len(offsets))`` model-order index of each position's neighbours at the (row, pixel
    column) ``offsets``; ``N`` (one past the last position, a zero slot) where a neighbour is off
    the image or not decoded before the position (local 2D's block order decodes some
    upper-right pixels later). A categorical model's neighbours are the same channel's."""
    rows, cols = config.sequence_grid
    n = rows * cols
    raster, order = decoding_order(config)
    r, c = raster // cols, raster % cols  # (N,) of each model position
    per_pixel = cols // config.image_size  # 1 (DMOL) or 3 subpixels
    index = torch.full((n, len(offsets)), n, dtype=torch.long)
    for j, (dr, dc) in enumerate(offsets):
        nr, nc = r + dr, c + dc * per_pixel
        inside = (nr >= 0) & (nc >= 0) & (nc < cols)
        position = order[(nr.clamp(min=0) * cols + nc.clamp(0, cols - 1))]
        before = inside & (position < torch.arange(n))
        index[before, j] = position[before]
    return index


def med_of_canvas(canvas: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The median edge prediction of positions from the ``canvas`` of earlier values,
    ``(B, N + 1)`` or ``(B, N + 1, 3)`` scaled with a zero slot last
    (:meth:`imgtx.model.ImageTransformer.canvas_of`), and their :data:`MED_NEIGHBOURS` ``index``
    ``(n, 3)`` from :func:`neighbour_index` -> ``(B, n[, 3])``."""
    left, upper_left, upper = canvas[:, index].unbind(2)  # (B, n[, 3]) each
    inside = index < canvas.shape[1] - 1  # (n, 3): not the zero slot
    if canvas.dim() == 3:
        inside = inside[:, :, None]
    return median_edge_prediction(left, upper_left, upper, inside[:, 0], inside[:, 2])
