"""Upscaling with a :class:`~imgtx.sr.model.SuperResolutionTransformer`: batched KV-cached sampling,
and tiling for images of any size.

A model upscales ``input_size``-square images. A larger (or non-square) image is

1. padded at the right and bottom by repeating its edge pixels, up to a multiple of
   ``input_size`` on each side;
2. cut into non-overlapping ``input_size``-square tiles;
3. upscaled tile by tile - ``batch_size`` tiles at a time, each batch encoded once and decoded
   with the decoder's KV cache (:meth:`imgtx.sr.model.SuperResolutionTransformer.generate`,
   which comes here for inputs that are not model-sized);
4. stitched into the output canvas, from which the padding is cropped away, so the output is
   exactly ``scale`` times the input on each side.

Seams: tiles are sampled independently - each sees only its own low-resolution tile - so the
texture the model invents need not continue across tile borders. Colours agree at borders (each
tile stays consistent with its input pixels); at higher temperatures fine texture can change at
a border. There is no overlap or blending. Anchored models (``config.anchor``) take their anchors
from the upscale of the *whole* (padded) image, cut into the output tiles: near a border a tile's
anchor is then the interpolation across the border rather than an edge-clamped one, so at
temperature 0 an anchored model's output is seamless wherever it follows its anchor (an untrained
one reproduces the whole-image bicubic upscale exactly). Edge padding only affects the last row
and column of tiles and is cropped away.

Temperature 0: an anchored model keeps each subpixel at its anchor unless it is confident of
another value (:class:`imgtx.sr.anchor.StayNearAnchor` with the model's ``config.anchor_rule``,
by default :data:`DEFAULT_RULE`), so a smooth input stays smooth instead of drifting into
streaks; ``rule=None`` gives plain argmax decoding. Since
nearly every value is then the anchor, an anchored model decodes at temperature 0 by fixed-point
passes started from the anchors (:func:`imgtx.sampling.decode_fixed_point`): whole-tile forward
passes until no value changes, exactly the subpixel-by-subpixel output, about 3x faster on CPU.

Block means (``config.block_means``): every output value is drawn (or, at temperature 0, chosen)
among those that keep its block's mean equal to the input pixel, so the output downscales
exactly to the input (:mod:`imgtx.sr.blockmean`).

Reproducibility: with a ``seed`` the same image, temperature and batch size give the same output;
temperature 0 (the most likely value of each subpixel, in decoding order) needs no seed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from imgtx.images import make_grid, read_image, save_image
from imgtx.resample import upscale_bicubic
from imgtx.sr.anchor import StayNearAnchor, make_anchors

if TYPE_CHECKING:
    from imgtx.sr.model import SuperResolutionTransformer

__all__ = ["DEFAULT_RULE", "upscale_batch", "upscale_tiles", "split_tiles", "pad_to_tiles",
           "stitch_tiles", "upscale_image", "upscale_file"]


DEFAULT_RULE = StayNearAnchor()  # anchored models at temperature 0 (see "Temperature 0" above)


def upscale_batch(model: SuperResolutionTransformer, low_res: torch.Tensor, *,
                  temperature: float | None = None, generator: torch.Generator | None = None,
                  use_cache: bool = True, return_logits: bool = False, progress: bool = False,
                  anchors: torch.Tensor | None = None, rule: StayNearAnchor | str | None = "auto",
                  fixed_point: bool | None = None, stats: dict | None = None):
    """Upscale a batch of model-sized inputs ``(B, 3, h, w)`` uint8:
    :meth:`SuperResolutionTransformer.generate <imgtx.sr.model.SuperResolutionTransformer.generate>`
    on one batch (see it for the arguments). Returns ``(B, 3, H, W)`` uint8 (and the logits)."""
    return model.generate(low_res, temperature=temperature, generator=generator,
                          use_cache=use_cache, return_logits=return_logits, progress=progress,
                          anchors=anchors, rule=rule, fixed_point=fixed_point, stats=stats)


def upscale_tiles(model: SuperResolutionTransformer, tiles: torch.Tensor, *,
                  temperature: float | None = None, generator: torch.Generator | None = None,
                  batch_size: int = 64, progress: bool = False,
                  anchors: torch.Tensor | None = None,
                  rule: StayNearAnchor | str | None = "auto", fixed_point: bool | None = None,
                  stats: dict | None = None) -> torch.Tensor:
    """Upscale ``(n, 3, h, w)`` uint8 model-sized tiles, ``batch_size`` at a time, with a
    progress bar over tiles (and one over the current batch's subpixels). ``anchors``
    ``(n, 3, H, W)``: the tiles' anchors for an anchored model (None: from each tile alone).
    ``rule``, ``fixed_point``: see :func:`upscale_batch`. ``stats``, if given, receives the
    fixed-point ``passes`` (most over the batches) and ``row_passes`` (summed).
    Returns ``(n, 3, H, W)`` uint8 on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs = []
    with tqdm(total=len(tiles), desc="upscaling", unit="tile", disable=not progress) as bar:
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start : start + batch_size]
            batch_anchors = None if anchors is None else anchors[start : start + batch_size]
            batch_stats = {}
            outputs.append(upscale_batch(model, batch, temperature=temperature,
                                         generator=generator, progress=progress,
                                         anchors=batch_anchors, rule=rule,
                                         fixed_point=fixed_point, stats=batch_stats).cpu())
            bar.update(len(batch))
            if stats is not None and batch_stats:
                stats["passes"] = max(stats.get("passes", 0), batch_stats["passes"])
                stats["row_passes"] = stats.get("row_passes", 0) + batch_stats["row_passes"]
    return torch.cat(outputs)


def split_tiles(image: torch.Tensor, tile: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``image`` ``(3, h, w)`` at the right and bottom with copies of its edge pixels to a
    multiple of ``tile`` and cut it into tiles.

    Returns the tiles ``(rows * cols, 3, tile, tile)`` in raster order and ``(rows, cols)``.
    """
    padded = pad_to_tiles(image, tile)  # (3, rows*tile, cols*tile)
    rows, cols = padded.shape[1] // tile, padded.shape[2] // tile
    tiles = padded.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4)  # (rows, cols, 3, t, t)
    return tiles.reshape(rows * cols, 3, tile, tile), (rows, cols)


def pad_to_tiles(image: torch.Tensor, tile: int) -> torch.Tensor:
    """``image`` ``(3, h, w)`` padded at the right and bottom with copies of its edge pixels to
    the next multiples of ``tile``."""
    _, height, width = image.shape
    rows, cols = -(-height // tile), -(-width // tile)  # ceil
    y = torch.arange(rows * tile).clamp(max=height - 1)  # edge padding by index clamping
    x = torch.arange(cols * tile).clamp(max=width - 1)
    return image[:, y][:, :, x]


def stitch_tiles(tiles: torch.Tensor, grid: tuple[int, int], height: int,
                 width: int) -> torch.Tensor:
    """Inverse of :func:`split_tiles` at any tile size: ``(rows * cols, 3, T, T)`` tiles in
    raster order -> ``(3, height, width)``, cropping the padding away."""
    rows, cols = grid
    n, channels, tile_h, tile_w = tiles.shape
    if n != rows * cols:
        raise ValueError(f"expected {rows}x{cols}={rows * cols} tiles, got {n}")
    canvas = tiles.view(rows, cols, channels, tile_h, tile_w).permute(2, 0, 3, 1, 4)
    canvas = canvas.reshape(channels, rows * tile_h, cols * tile_w)  # (3, rows*T, cols*T)
    return canvas[:, :height, :width].contiguous()


def upscale_image(model: SuperResolutionTransformer, image: torch.Tensor, *,
                  temperature: float | None = None, seed: int | None = None,
                  batch_size: int = 64, progress: bool = False,
                  rule: StayNearAnchor | str | None = "auto", fixed_point: bool | None = None,
                  stats: dict | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Upscale one RGB image of any size by ``config.scale`` (tiled; see the module docstring).

    Args:
        image: ``(3, h, w)`` uint8.
        temperature: see :func:`upscale_batch` (None: ``config.sampling_temperature``).
        seed: seeds the sampling (None: ``generator``, or torch's global generator).
        batch_size: tiles decoded together.
        progress: show a progress bar over tiles.
        rule: the temperature-0 rule of anchored models, see :func:`upscale_batch`.
        fixed_point, stats: see :func:`upscale_tiles`.

    Returns:
        ``(3, h * scale, w * scale)`` uint8.
    """
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected an RGB image (3, h, w) uint8, got {tuple(image.shape)} "
                         f"{image.dtype}; read files with imgtx.images.read_image")
    config = model.config
    if seed is not None:
        generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    tiles, grid = split_tiles(image, config.input_size)
    anchors = None
    if config.anchor != "none":  # from the whole image: see "Seams" in the module docstring
        whole = make_anchors(pad_to_tiles(image, config.input_size)[None], config)[0]
        anchors, _ = split_tiles(whole, config.output_size)
    upscaled = upscale_tiles(model, tiles, temperature=temperature, generator=generator,
                             batch_size=batch_size, progress=progress, anchors=anchors,
                             rule=rule, fixed_point=fixed_point, stats=stats)
    return stitch_tiles(upscaled, grid, image.shape[1] * config.scale,
                        image.shape[2] * config.scale)


def upscale_file(model: SuperResolutionTransformer, input_path: str | Path,
                 output_path: str | Path, *, temperature: float | None = None,
                 seed: int | None = None, batch_size: int = 64, progress: bool = True,
                 bicubic_path: str | Path | None = None,
                 compare_path: str | Path | None = None) -> dict:
    """Read any image file (PNG/JPEG/...; grayscale and alpha converted to RGB), upscale it and
    write ``output_path``. ``bicubic_path`` also writes the bicubic upscale of the same input;
    ``compare_path`` writes bicubic and model output side by side. Returns a summary dict.

    Raises :class:`imgtx.data.ImageDataError` naming the file when it cannot be read.
    """
    image = read_image(input_path)  # (3, h, w) uint8
    start = time.time()
    out = upscale_image(model, image, temperature=temperature, seed=seed,
                        batch_size=batch_size, progress=progress)
    seconds = time.time() - start
    save_image(out, output_path)
    scale = model.config.scale
    if bicubic_path is not None or compare_path is not None:
        bicubic = upscale_bicubic(image[None], scale)[0]
        if bicubic_path is not None:
            save_image(bicubic, bicubic_path)
        if compare_path is not None:
            save_image(make_grid(torch.stack([bicubic, out]), columns=2), compare_path)
    tile = model.config.input_size
    tiles = -(-image.shape[1] // tile) * -(-image.shape[2] // tile)
    temperature = model.config.sampling_temperature if temperature is None else temperature
    return {"input": str(input_path), "output": str(output_path),
            "input_size": [image.shape[2], image.shape[1]],  # width, height
            "output_size": [out.shape[2], out.shape[1]], "scale": scale, "tiles": tiles,
            "temperature": temperature, "seed": seed, "batch_size": batch_size,
            "seconds": round(seconds, 3)}
