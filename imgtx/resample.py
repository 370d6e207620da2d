"""Resampling of uint8 image batches: the fixed up- and downscalers of super-resolution.

Nearest and bicubic upscaling use PIL (the interpolation baselines of the super-resolution
experiments of Parmar et al. 2018, and of ``imgtx sr eval``); area (box) downscaling, which makes
the low-resolution inputs (T2T ``image_utils.resize_by_area``), is computed exactly in integers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = ["check_image_batch", "upscale_bicubic", "upscale_nearest", "downscale_area"]


def check_image_batch(images: torch.Tensor, name: str = "images") -> None:
    """Raise a ValueError unless ``images`` is a uint8 batch ``(B, 3, H, W)``."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"{name} must be a uint8 batch of shape (B, 3, H, W), got dtype {images.dtype} and "
            f"shape {tuple(images.shape)}"
        )


def _resize_with_pil(images: torch.Tensor, factor: int, resample: Image.Resampling) -> torch.Tensor:
    check_image_batch(images)
    if factor < 1:
        raise ValueError(f"upscale factor must be a positive integer, got {factor}")
    _, _, height, width = images.shape
    size = (width * factor, height * factor)  # PIL sizes are (width, height)
    hwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, h, w, 3)
    out = [np.asarray(Image.fromarray(image).resize(size, resample)) for image in hwc]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # (B, 3, hf, wf)


def upscale_bicubic(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upscaling with PIL (rounded and clamped to uint8 by PIL).

    Args:
        images: ``(B, 3, h, w)`` uint8.
        factor: integer scale.

    Returns:
        ``(B, 3, h * factor, w * factor)`` uint8.
    """
    return _resize_with_pil(images, factor, Image.Resampling.BICUBIC)


def upscale_nearest(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling with PIL: each pixel becomes a ``factor x factor`` block.

    Args:
        images: ``(B, 3, h, w)`` uint8.
        factor: integer scale.

    Returns:
        ``(B, 3, h * factor, w * factor)`` uint8.
    """
    return _resize_with_pil(images, factor, Image.Resampling.NEAREST)


def downscale_area(
    images: torch.Tensor, factor: int, rounding: Literal["nearest", "floor"] = "nearest"
) -> torch.Tensor:
    """Area (box) downscaling: the mean of each ``factor x factor`` block, in exact integers.

    Rounding of the block mean: ``"nearest"`` rounds halves up (``floor(mean + 0.5)``);
    ``"floor"`` truncates, which is what T2T's ``resize_by_area`` does (``tf.to_int64`` of the
    float result of ``tf.image.resize_images(..., AREA)``), for matching T2T-prepared data.

    Args:
        images: ``(B, 3, H, W)`` uint8 with H and W divisible by ``factor``.
        factor: integer scale.
        rounding: ``"nearest"`` or ``"floor"``.

    Returns:
        ``(B, 3, H // factor, W // factor)`` uint8.
    """
    check_image_batch(images)
    batch, channels, height, width = images.shape
    if factor < 1 or height % factor or width % factor:
        raise ValueError(
            f"area downscaling needs H and W divisible by the factor; got {height}x{width} and "
            f"factor {factor}. Crop the images first."
        )
    blocks = images.reshape(batch, channels, height // factor, factor, width // factor, factor)
    sums = blocks.sum(dim=(3, 5), dtype=torch.int64)  # (B, 3, H/f, W/f)
    area = factor * factor
    if rounding == "nearest":
        means = (2 * sums + area) // (2 * area)  # floor(sum / area + 1/2)
    elif rounding == "floor":
        means = sums // area
    else:
        raise ValueError(f"rounding must be 'nearest' or 'floor', got {rounding!r}")
    return means.to(torch.uint8)
