"""Range coding of image tiles under an Image Transformer's own likelihood.

The model predicts one position at a time through its cached decoder
(:meth:`imgtx.model.ImageTransformer.incremental_decoder`); at each position the coded pmf is the
model's likelihood, computed in float64 from that step's head outputs:

* categorical heads: the softmax of the 256 logits (the predictor's offset logits included, as
  the decoder's outputs already carry them);
* DMOL heads: the discretized logistic mixture of PixelCNN++ (Salimans et al. 2017, eq. 2), coded
  channel by channel as ``p(r) p(g | r) p(b | r, g)``: channel c's pmf mixes the components with
  their posterior weights given the channels before it, and its means read those channels
  (:func:`imgtx.likelihood.dmol_nll_per_channel` splits the likelihood the same way). The median
  predictor's shift is already folded into the decoder's outputs.

constriction's ``Categorical(perfect=False)`` quantises each pmf to the fixed-point precision of
its range coder and guarantees every one of the 256 values a nonzero probability, so any value
can be coded, whatever the model thinks of it (Bamler 2022, "Understanding Entropy Coding With
Asymmetric Numeral Systems (ANS): a Statistician's Perspective"; constriction's documentation of
``Categorical``).

Encoder and decoder run *the same function* (:func:`code_tiles`), which differs only in whether
a value comes from the image or from the range decoder; so the floats, the batch layout and the
quantised frequencies agree bit for bit on the same build.

Tiles: the image is cut into ``tile x tile`` tiles (the model's size), coded independently in
batches. Pixels outside the image are the nearest edge pixel of the tile (above or to the left,
so already known to the decoder in raster and block-raster order) and are never coded; neither
are the green and blue of a greyscale image, which equal its red.

Shapes: T tiles, S tile side, N positions of the model, K mixtures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch
import torch.nn.functional as F

from imgtx.likelihood import (
    discretized_logistic_log_prob,
    dmol_adapt,
    dmol_conditional_means,
    dmol_shift_log_scales,
    dmol_split_params,
    scale_pixels,
)
from imgtx.logistic import logistic_bin_probs
from imgtx.neighbours import decoding_order

__all__ = ["TileLayout", "tile_layout", "split_tiles", "join_tiles", "tile_count", "code_tiles",
           "RangeSink", "RangeSource"]


@dataclass
class TileLayout:
    """Which values of each tile are coded, and where the others are copied from.

    Attributes (model order; DMOL has a channel axis of 3, categorical none):
        coded: ``(T, N[, 3])`` bool, True where the value is range coded.
        source_position: ``(T, N[, 3])`` long, the position an uncoded value copies (itself for
            coded values).
        source_channel: ``(T, N, 3)`` long (DMOL only), the channel it copies.
    """

    coded: torch.Tensor
    source_position: torch.Tensor
    source_channel: torch.Tensor | None


def tile_layout(config, sizes: list[tuple[int, int]], grey: bool) -> TileLayout:
    """The :class:`TileLayout` of tiles whose image part is ``sizes[i] = (h, w)`` pixels (the
    top-left corner of the tile); ``grey``: green and blue copy red."""
    s = config.image_size
    raster, order = decoding_order(config)  # (N,) each
    dmol = config.likelihood == "dmol"
    per_pixel = 1 if dmol else 3
    rows = torch.arange(s)[:, None].expand(s, s)
    cols = torch.arange(s)[None, :].expand(s, s)
    coded, source_position, source_channel = [], [], []
    for h, w in sizes:
        inside = (rows < h) & (cols < w)  # (S, S)
        # The nearest image pixel: clamp into the tile's image part (edge replication).
        source_pixel = (rows.clamp(max=h - 1) * s + cols.clamp(max=w - 1)).flatten()  # (S*S,)
        if dmol:
            pixel = raster  # (N,) raster pixel of each position
            channel_coded = torch.tensor([True, not grey, not grey])
            tile_coded = inside.flatten()[pixel, None] & channel_coded  # (N, 3)
            position = order[source_pixel[pixel]][:, None].expand(-1, 3).clone()  # (N, 3)
            channel = torch.arange(3).expand(len(pixel), 3).clone()
            if grey:  # an image pixel's g and b copy its own r
                here = inside.flatten()[pixel]
                channel[here, 1:] = 0
            source_channel.append(channel)
        else:
            pixel, channel = raster // per_pixel, raster % per_pixel  # (N,) each
            tile_coded = inside.flatten()[pixel] & ((channel == 0) | (not grey))
            # grey: g and b copy r of the same pixel; padding copies the same channel
            copied_channel = torch.where(inside.flatten()[pixel] & torch.tensor(grey),
                                         torch.zeros_like(channel), channel)
            position = order[source_pixel[pixel] * per_pixel + copied_channel]
        position = torch.where(tile_coded, torch.arange(len(raster)).view(
            -1, *([1] * (tile_coded.dim() - 1))).expand_as(tile_coded), position)
        coded.append(tile_coded)
        source_position.append(position)
    return TileLayout(torch.stack(coded), torch.stack(source_position),
                      torch.stack(source_channel) if dmol else None)


def tile_count(height: int, width: int, size: int) -> int:
    """Tiles of ``size x size`` that :func:`split_tiles` cuts an image of this size into (the
    same either way up)."""
    return -(-height // size) * -(-width // size)


def split_tiles(pixels: np.ndarray, size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``(H, W, 3)`` uint8 -> tiles ``(T, size, size, 3)`` in raster order of the tile grid,
    edge-padded, and each tile's image part ``(h, w)``."""
    height, width = pixels.shape[:2]
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    padded = np.pad(pixels, ((0, rows * size - height), (0, cols * size - width), (0, 0)),
                    mode="edge")
    tiles = padded.reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
    sizes = [(min(size, height - r * size), min(size, width - c * size))
             for r in range(rows) for c in range(cols)]
    return np.ascontiguousarray(tiles.reshape(rows * cols, size, size, 3)), sizes


def join_tiles(tiles: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`split_tiles`: ``(T, S, S, 3)`` -> ``(height, width, 3)``."""
    size = tiles.shape[1]
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    grid = tiles.reshape(rows, cols, size, size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(grid.reshape(rows * size, cols * size, 3)[:height, :width])


class RangeSink:
    """The encoder's side of :func:`code_tiles`: codes the true values."""

    def __init__(self) -> None:
        self.coder = constriction.stream.queue.RangeEncoder()
        self.family = constriction.stream.model.Categorical(perfect=False)

    def code(self, probabilities: np.ndarray, values: torch.Tensor | None) -> torch.Tensor:
        """Encode ``values`` ``(n,)`` under ``probabilities`` ``(n, 256)`` float64; returns them."""
        self.coder.encode(values.numpy().astype(np.int32), self.family, probabilities)
        return values

    def words(self) -> np.ndarray:
        """The compressed stream, uint32 words."""
        return self.coder.get_compressed()


class RangeSource:
    """The decoder's side of :func:`code_tiles`: decodes values from ``words``."""

    def __init__(self, words: np.ndarray) -> None:
        self.coder = constriction.stream.queue.RangeDecoder(words)
        self.family = constriction.stream.model.Categorical(perfect=False)

    def code(self, probabilities: np.ndarray, values: torch.Tensor | None) -> torch.Tensor:
        """Decode ``(n,)`` values under ``probabilities`` ``(n, 256)`` float64."""
        return torch.from_numpy(self.coder.decode(self.family, probabilities).astype(np.int64))


def _categorical_pmf(logits: torch.Tensor) -> torch.Tensor:
    """``(n, 256)`` logits -> pmf in float64."""
    return torch.softmax(logits.double(), dim=-1)


@torch.no_grad()
def code_tiles(model, layout: TileLayout, coder, truth: torch.Tensor | None = None,
               batch: int = 64, log_scale_offsets=None, adapter: torch.Tensor | None = None,
               bar=None) -> tuple[torch.Tensor, float]:
    """Code every tile of ``layout`` through ``coder`` (:class:`RangeSink` with the tiles'
    ``truth``, or :class:`RangeSource`), ``batch`` tiles at a time, one cached decoder per batch.
    ``log_scale_offsets``: DMOL only, ``(r, g, b)`` added to every log-scale of the model's
    outputs (:func:`imgtx.likelihood.dmol_shift_log_scales`), the encoder's per-image choice.
    ``adapter``: DMOL only, ``(4 + 4K,)`` applied after them (:func:`imgtx.likelihood.dmol_adapt`,
    :mod:`imgtx.codec.adapt`). ``bar``: a tqdm bar advanced by each step's tiles (positions).

    ``truth`` and the result are model-order values ``(T, N, 3)`` (DMOL) or ``(T, N)`` long.
    Also returns the ideal code length in bits of the coded values under the float64 pmfs."""
    config = model.config
    dmol = config.likelihood == "dmol"
    tiles, n = layout.coded.shape[0], config.sequence_length
    values = torch.zeros((tiles, n, 3) if dmol else (tiles, n), dtype=torch.long)
    bits = 0.0
    for start in range(0, tiles, batch):
        rows = slice(start, min(start + batch, tiles))
        coded = layout.coded[rows]
        flat = coded.flatten(1) if not dmol else coded.any(-1)
        if not flat.any():
            steps = 0
        else:
            steps = int(flat.nonzero()[:, 1].max()) + 1  # nothing coded after the last one
        decoder = model.incremental_decoder(coded.shape[0])
        part = values[rows]  # a view: writes land in values
        part_layout = TileLayout(coded, layout.source_position[rows],
                                 None if not dmol else layout.source_channel[rows])
        part_truth = None if truth is None else truth[rows]
        for t in range(steps):
            outputs = decoder.outputs()  # (b, 256 | 10K)
            if log_scale_offsets is not None:
                outputs = dmol_shift_log_scales(outputs, log_scale_offsets)
            if adapter is not None:
                outputs = dmol_adapt(outputs, adapter)
            step = _dmol_step if dmol else _categorical_step
            bits += step(outputs, part, part_layout, t, coder, part_truth)
            decoder.feed(part[:, t])
            if bar is not None:
                bar.update(coded.shape[0])
        # Positions after the last coded one copy their sources (edge padding).
        for t in range(steps, n):
            _copy(part, part_layout, t)
    return values, bits


def _copy(values: torch.Tensor, layout: TileLayout, t: int) -> None:
    """Fill position ``t`` of every tile from its sources (coded values are overwritten later)."""
    b = torch.arange(values.shape[0])
    if layout.source_channel is None:
        values[:, t] = values[b, layout.source_position[:, t]]
    else:
        for c in range(3):
            values[:, t, c] = values[b, layout.source_position[:, t, c],
                                     layout.source_channel[:, t, c]]


def _categorical_step(logits, values, layout, t, coder, truth) -> float:
    _copy(values, layout, t)
    coded = layout.coded[:, t]  # (b,)
    if not coded.any():
        return 0.0
    pmf = _categorical_pmf(logits[coded])  # (n, 256) float64
    chosen = coder.code(pmf.numpy(), None if truth is None else truth[coded, t])
    values[coded, t] = chosen
    return -float(torch.log2(pmf.gather(1, chosen[:, None])).sum())


def _dmol_step(outputs, values, layout, t, coder, truth) -> float:
    coded = layout.coded[:, t]  # (b, 3)
    # Rows whose channel c or a later one is coded need channel c's component probabilities.
    needed = coded.flip(-1).cummax(-1).values.flip(-1)  # (b, 3)
    rows = needed[:, 0].nonzero()[:, 0]
    b = torch.arange(values.shape[0])
    bits = 0.0
    if len(rows):
        p = dmol_split_params(outputs[rows].double())  # float64 parts, (n, K[, 3])
        log_weights = F.log_softmax(p.logits, dim=-1)  # (n, K)
        known = torch.zeros(len(rows), 3, dtype=torch.float64)  # scaled channels so far
    for c in range(3):
        values[:, t, c] = values[b, layout.source_position[:, t, c], layout.source_channel[:, t, c]]
        if not len(rows) or not needed[rows, c].any():
            continue
        mean = dmol_conditional_means(p, known)[..., c]  # (n, K)
        log_scale = p.log_scales[..., c]  # (n, K)
        here = coded[rows, c]  # (n,)
        if here.any():
            sub = rows[here]
            weights = torch.softmax(log_weights[here], dim=-1)  # (m, K) posterior over components
            probs = logistic_bin_probs(mean[here], log_scale[here])  # (m, K, 256)
            pmf = torch.bmm(weights[:, None, :], probs)[:, 0]  # (m, 256)
            pmf = pmf / pmf.sum(-1, keepdim=True)  # the tiny-bin rule leaves it a hair off 1
            chosen = coder.code(pmf.numpy(), None if truth is None else truth[sub, t, c])
            values[sub, t, c] = chosen
            bits -= float(torch.log2(pmf.gather(1, chosen[:, None])).sum())
        value = values[rows, t, c]  # (n,)
        known[:, c] = scale_pixels(value, torch.float64)
        log_weights = log_weights + discretized_logistic_log_prob(
            known[:, c, None], mean, log_scale)  # (n, K): p_k(value) joins the posterior
    return bits
