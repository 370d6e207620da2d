"""Image-quality metrics for super-resolution evaluation.

PSNR and SSIM wrap scikit-image with ``data_range=255`` on uint8 images. The resamplers
(``upscale_bicubic``, ``upscale_nearest``, ``downscale_area``) live in :mod:`imgtx.resample` and
are re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from imgtx.resample import check_image_batch, downscale_area, upscale_bicubic, upscale_nearest

__all__ = ["psnr", "ssim", "upscale_bicubic", "upscale_nearest", "downscale_area"]

SSIM_WINDOW = 7  # scikit-image's default window side


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    check_image_batch(pred, "pred")
    check_image_batch(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )


def _hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) tensor -> (B, H, W, 3) numpy."""
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _reduce(values: np.ndarray, per_image: bool) -> float | np.ndarray:
    return values if per_image else float(values.mean())


def psnr(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 * log10(255^2 / MSE)``, computed per image.

    Args:
        pred: ``(B, 3, H, W)`` uint8.
        target: ``(B, 3, H, W)`` uint8.
        per_image: return the ``(B,)`` per-image values instead of their mean.

    Returns:
        Mean over images of the per-image PSNR (or the array). An image identical to its target
        has PSNR ``inf``, and then so does the mean; use ``per_image=True`` to filter such images.
    """
    _check_pair(pred, target)
    values = []
    for p, t in zip(_hwc(pred), _hwc(target)):
        if np.array_equal(p, t):
            values.append(float("inf"))  # skimage would divide by zero with a warning
        else:
            values.append(peak_signal_noise_ratio(t, p, data_range=255))
    return _reduce(np.array(values, dtype=np.float64), per_image)


def ssim(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> float | np.ndarray:
    """Structural similarity (scikit-image, uniform 7x7 window, channels averaged), per image.

    Images smaller than 7 pixels on a side use the largest odd window that fits; SSIM needs a
    window of at least 3, so images must be at least 3x3.

    Args:
        pred: ``(B, 3, H, W)`` uint8.
        target: ``(B, 3, H, W)`` uint8.
        per_image: return the ``(B,)`` per-image values instead of their mean.

    Returns:
        Mean over images of the per-image SSIM (or the array); 1.0 for identical images.
    """
    _check_pair(pred, target)
    side = min(pred.shape[-2:])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(pred.shape[-2:])}")
    win_size = min(SSIM_WINDOW, side if side % 2 == 1 else side - 1)
    values = [
        structural_similarity(t, p, data_range=255, channel_axis=-1, win_size=win_size)
        for p, t in zip(_hwc(pred), _hwc(target))
    ]
    return _reduce(np.array(values, dtype=np.float64), per_image)
