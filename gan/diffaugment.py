"""Differentiable Augmentation (Zhao, Liu, Lin, Zhu, Han 2020, "Differentiable Augmentation for
Data-Efficient GAN Training", arXiv 2006.10738), with TransGAN's extra erase ops.

Every op maps a batch ``(B, C, H, W)`` to a batch of the same shape and is differentiable with
respect to its input, so the discriminator can augment real images, fakes and gradient-penalty
interpolates alike and the generator still receives gradients through it. Randomness comes from
torch's global generator (seed it with ``torch.manual_seed``).

Policies are comma-separated op names, e.g. ``"translation,cutout,color"``:

* ``color``: brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]), contrast (x U[0.5, 1.5]),
  per sample (DiffAugment ``rand_brightness`` / ``rand_saturation`` / ``rand_contrast``).
* ``translation``: shift by up to ``ratio`` (TransGAN: 0.2) of the side, zero fill, per sample.
* ``cutout``: with probability 0.3 per batch, a zeroed box of half the side at a random centre
  per sample (TransGAN ``rand_cutout``: the coin is tossed once per batch).
* ``erase_ratio``: like cutout, box sides drawn in [0.2, 0.7] of the image (TransGAN
  ``rand_erase_ratio``).
* ``stl_erase_ratio``: box sides drawn in [20, side/2 + 20] pixels (TransGAN
  ``rand_stl_erase_ratio``, used for STL-10 48^2).
* ``hue``: with probability 0.5 per sample, a rotation of the colour cube around the luma axis
  by U[-pi, pi] (StyleGAN2-ADA ``hue``; TransGAN ``rand_hue``).

Shapes: B batch, C channels, H/W image rows/cols.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from imgtx.errors import UserError
from imgtx.training.draws import rand_for_batch, randint_for_batch

__all__ = ["AUGMENTATIONS", "diff_augment", "check_policy", "translation", "cutout", "erase_box",
           "brightness", "saturation", "contrast", "hue"]

CUTOUT_PROBABILITY = 0.3  # TransGAN tosses one coin per batch for every erase op


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Add U[-0.5, 0.5] per sample."""
    return x + (rand_for_batch(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale the deviation from the per-pixel channel mean by U[0, 2] per sample."""
    mean = x.mean(dim=1, keepdim=True)
    factor = rand_for_batch(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2
    return (x - mean) * factor + mean


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale the deviation from the per-image mean by U[0.5, 1.5] per sample."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = rand_for_batch(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5
    return (x - mean) * factor + mean


def translation(x: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """Shift each sample by integers in ``[-ratio*side, ratio*side]`` (rounded), zero fill."""
    b, c, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = randint_for_batch(-max_dy, max_dy + 1, b, 1, 1, device=x.device)
    dx = randint_for_batch(-max_dx, max_dx + 1, b, 1, 1, device=x.device)
    # Output pixel (i, j) reads input (i + dy, j + dx); out-of-image reads hit the zero border.
    rows = (torch.arange(h, device=x.device)[None, :, None] + dy + 1).clamp(0, h + 1)  # (B, H, 1)
    cols = (torch.arange(w, device=x.device)[None, None, :] + dx + 1).clamp(0, w + 1)  # (B, 1, W)
    padded = F.pad(x, (1, 1, 1, 1))  # (B, C, H+2, W+2)
    flat = padded.flatten(2)  # (B, C, (H+2)(W+2))
    index = (rows * (w + 2) + cols).flatten(1)  # (B, H*W)
    return flat.gather(2, index[:, None, :].expand(b, c, h * w)).view(b, c, h, w)


def erase_box(x: torch.Tensor, box_h: int, box_w: int) -> torch.Tensor:
    """Zero a ``box_h x box_w`` box (clipped at the border) centred at a random pixel per
    sample. Centre ranges follow DiffAugment ``rand_cutout``."""
    b, _, h, w = x.shape
    cy = randint_for_batch(0, h + (1 - box_h % 2), b, 1, 1, device=x.device)
    cx = randint_for_batch(0, w + (1 - box_w % 2), b, 1, 1, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - box_h // 2, cx - box_w // 2
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    return x * (~inside).to(x.dtype)[:, None]  # (B, 1, H, W) mask broadcast over channels


def _coin() -> bool:
    return bool(torch.rand(()) < CUTOUT_PROBABILITY)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """With probability 0.3 (once per batch): erase a ``ratio``-sized box in every sample."""
    if not _coin():
        return x
    return erase_box(x, int(x.shape[2] * ratio + 0.5), int(x.shape[3] * ratio + 0.5))


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` from torch's generator."""
    return int(torch.randint(low, high + 1, ()))


def erase_ratio(x: torch.Tensor) -> torch.Tensor:
    """With probability 0.3: erase a box with sides in [0.2, 0.7] of the image."""
    h, w = x.shape[2], x.shape[3]
    box_h, box_w = _randint(int(h * 0.2), int(h * 0.7)), _randint(int(w * 0.2), int(w * 0.7))
    return erase_box(x, max(box_h, 1), max(box_w, 1)) if _coin() else x


def stl_erase_ratio(x: torch.Tensor) -> torch.Tensor:
    """With probability 0.3: erase a box with sides in [20, side/2 + 20] pixels."""
    h, w = x.shape[2], x.shape[3]
    box_h, box_w = _randint(20, h // 2 + 20), _randint(20, w // 2 + 20)
    return erase_box(x, box_h, box_w) if _coin() else x


def hue(x: torch.Tensor) -> torch.Tensor:
    """With probability 0.5 per sample: rotate RGB around the luma axis (1,1,1)/sqrt(3) by an
    angle in U[-pi, pi] (Rodrigues' rotation formula)."""
    if x.shape[1] != 3:
        raise UserError(f"the 'hue' augmentation needs RGB images, got {x.shape[1]} channels")
    b = x.shape[0]
    theta = (rand_for_batch(b, device=x.device, dtype=x.dtype) * 2 - 1) * math.pi
    theta = torch.where(rand_for_batch(b, device=x.device) < 0.5, theta, torch.zeros_like(theta))
    axis = torch.full((3,), 3 ** -0.5, device=x.device, dtype=x.dtype)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]],
                         device=x.device, dtype=x.dtype) * 3 ** -0.5  # [axis]_x
    outer = axis[:, None] * axis[None, :]
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    rotation = cos * torch.eye(3, device=x.device, dtype=x.dtype) + sin * cross \
        + (1 - cos) * outer  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", rotation, x)


AUGMENTATIONS: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {
    "color": [brightness, saturation, contrast],
    "translation": [translation],
    "cutout": [cutout],
    "erase_ratio": [erase_ratio],
    "stl_erase_ratio": [stl_erase_ratio],
    "hue": [hue],
}


def check_policy(policy: str) -> list[str]:
    """The op names of a policy string; a :class:`UserError` for an unknown name."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise UserError(f"unknown DiffAugment op(s) {unknown} in policy {policy!r}; known: "
                        f"{', '.join(AUGMENTATIONS)}")
    return names


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the ops of ``policy`` in order: ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    An empty policy returns ``x`` unchanged.
    """
    for name in check_policy(policy):
        for op in AUGMENTATIONS[name]:
            x = op(x)
    return x


class AugmentedInput:
    """What every discriminator does with its input first: check the shape, then apply DiffAugment
    inside ``forward``, so real images, fakes and gradient-penalty interpolates are augmented alike
    (Zhao et al. 2020, Sec. 3). Mixed into a module whose ``config`` has ``image_size`` and
    ``diffaug``."""

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment with ``config.diffaug`` (identity for an empty policy)."""
        return diff_augment(images, self.config.diffaug)

    def checked_input(self, images: torch.Tensor, augment: bool | None) -> torch.Tensor:
        """``images`` ``(B, 3, S, S)``, augmented when ``augment`` (default: in training mode)."""
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise UserError(f"this discriminator takes (B, 3, {size}, {size}) images, got "
                            f"{tuple(images.shape)}")
        if self.training if augment is None else augment:
            images = self.augment(images)
        return images
