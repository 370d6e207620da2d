"""The encoder's choice of orientation: code the image turned the way the model predicts best.

An autoregressive model reads an image in one fixed order (rows top to bottom, left to right),
so the same picture rotated or mirrored is a different sequence to it, and some orientations
cost fewer bits than others: a gradient that runs down the image is predicted better once rows
above it are known, a sky is better coded before the horizon than after it. The encoder scores
all eight orientations of the dihedral group (four quarter turns, each with or without a mirror)
with one forward pass each, codes the cheapest, and records which one in the header (3 bits in
one byte, present only when it is not the identity). The decoder decodes the oriented image and
turns it back. This is the encoder-side search of a classical codec (PNG's per-row filter
choice, JPEG XL's choice of predictor and context tree per image), applied to the one free
choice a fixed model leaves: no probability changes, so the coded values keep the model's exact
likelihood.

Measured on the held-out photos with ``imgtx-photos-dmol-small`` (docs/codec.md): 2.5% fewer
bits on native 32x32 crops and 1.9% on scene crops.
"""

from __future__ import annotations

import numpy as np
import torch

from imgtx.codec.coder import split_tiles
from imgtx.likelihood import dmol_nll_per_channel

__all__ = ["ORIENTATIONS", "orient", "unorient", "oriented_size", "coded_bits",
           "best_orientation"]

#: Orientation k turns the image k % 4 quarter turns counter-clockwise, then mirrors it
#: left-right when k >= 4; 0 is the identity.
ORIENTATIONS = 8


def orient(pixels: np.ndarray, k: int) -> np.ndarray:
    """``(H, W[, C])`` pixels in orientation ``k`` (a copy, contiguous)."""
    turned = np.rot90(pixels, k % 4, axes=(0, 1))
    if k >= 4:
        turned = turned[:, ::-1]
    return np.ascontiguousarray(turned)


def unorient(pixels: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`orient`: ``unorient(orient(x, k), k) == x``."""
    if k >= 4:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(np.rot90(pixels, -(k % 4), axes=(0, 1)))


def oriented_size(height: int, width: int, k: int) -> tuple[int, int]:
    """``(height, width)`` of an image of this size in orientation ``k``."""
    return (width, height) if k % 2 else (height, width)


@torch.no_grad()
def coded_bits(model, pixels: np.ndarray, one_channel: bool, batch: int = 64) -> float:
    """The model's code length in bits of the values the codec would code for ``pixels``
    ``(H, W, 3)`` uint8: every tile's image part (edge padding is not coded), red only when
    ``one_channel``. One teacher-forced forward pass per ``batch`` tiles (float32; the coded
    figure, in float64 through the cached decoder, agrees to about 1e-5 relative)."""
    size = model.config.image_size
    tiles, sizes = split_tiles(pixels, size)
    rows = torch.arange(size)[:, None]
    cols = torch.arange(size)[None, :]
    inside = torch.stack([(rows < h) & (cols < w) for h, w in sizes]).flatten(1)  # (T, S*S)
    channels = torch.tensor([True, not one_channel, not one_channel])
    mask = inside[:, :, None] & channels  # (T, S*S, 3): pixel-major raster order
    total = 0.0
    for start in range(0, len(tiles), batch):
        images = torch.from_numpy(tiles[start : start + batch]).permute(0, 3, 1, 2)
        outputs = model(images)
        targets = model.targets(images)
        if model.config.likelihood == "dmol":
            nats = dmol_nll_per_channel(outputs, targets)  # (B, S*S, 3)
        else:
            nats = model.nll_of_outputs(outputs, images).view(len(images), -1, 3)
        total += float((nats * mask[start : start + batch]).sum())
    return total / float(np.log(2))


def best_orientation(model, pixels: np.ndarray, one_channel: bool,
                     batch: int = 64) -> tuple[int, list[float]]:
    """The orientation whose coded values cost the model fewest bits (the lowest ``k`` among
    equals, so the identity wins ties), and the bits of all eight."""
    bits = [coded_bits(model, orient(pixels, k), one_channel, batch) for k in range(ORIENTATIONS)]
    return int(np.argmin(bits)), bits
