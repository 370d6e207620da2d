"""An exponential moving average (EMA) of a model's weights, with a half-life in images.

As in StyleGAN2-ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited
Data", NeurIPS; ``training_loop.py``: ``ema_kimg``, ``ema_rampup``) and EDM (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS; ``ema_halflife_kimg``,
``ema_rampup_ratio``): after each optimiser step that saw ``batch_images`` images (over all
processes), with ``images_seen`` images seen *before* that step,

    half_life = min(half_life_images, images_seen * warmup_ratio)   (no cap if warmup_ratio is None)
    beta      = 0.5 ** (batch_images / max(half_life, 1e-8))
    ema       = beta * ema + (1 - beta) * weights

so the average forgets half of its past every ``half_life`` images, and early in training (when
the weights move fast) it follows them closely: at the first step ``beta`` is 0 and the copy
equals the model. Buffers (e.g. running statistics) are copied, not averaged.

A fixed decay per update (``EMASettings(decay=d)``: ``beta = d`` at every update, no warm-up) is
the other common form (TransGAN ``functions.py::train`` with ``--ema_warmup 0``: ``--ema 0.995``).
The two agree when ``d = 0.5 ** (batch_images / half_life)``, i.e.
``half_life = batch_images * ln 2 / -ln d``: 0.995 at 64 images per update is a half-life of
8,850 images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["EMASettings", "EMA", "ema_beta"]


@dataclass
class EMASettings:
    """How fast an EMA forgets: ``half_life_images`` images (StyleGAN2-ADA uses 10k-20k images
    for its generators), capped at ``warmup_ratio`` x the images seen so far (0.05 in
    StyleGAN2-ADA's ``ema_rampup``; ``None``: no warm-up). ``decay``, when given, is the fixed
    ``beta`` of every update instead, and the other two are not used."""

    half_life_images: float = 10_000.0
    warmup_ratio: float | None = 0.05
    decay: float | None = None

    def __post_init__(self) -> None:
        if self.decay is not None and not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if not self.half_life_images > 0:
            raise ValueError(f"half_life_images must be > 0, got {self.half_life_images}")
        if self.warmup_ratio is not None and not self.warmup_ratio > 0:
            raise ValueError(f"warmup_ratio must be > 0 or None, got {self.warmup_ratio}")


def ema_beta(settings: EMASettings, images_seen: int, batch_images: int) -> float:
    """The decay of one update: ``settings.decay`` if given, else
    ``0.5 ** (batch_images / half_life)`` with the warm-up cap."""
    if settings.decay is not None:
        return settings.decay
    half_life = settings.half_life_images
    if settings.warmup_ratio is not None:
        half_life = min(half_life, images_seen * settings.warmup_ratio)
    return 0.5 ** (batch_images / max(half_life, 1e-8))


class EMA:
    """An EMA copy of ``model`` (a deep copy in eval mode without gradients, on the same device).

    ``state_dict``/``load_state_dict`` make it a checkpointed object of a run
    (``accelerator.register_for_checkpointing``).
    """

    def __init__(self, model: nn.Module, settings: EMASettings) -> None:
        self.settings = settings
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: int, batch_images: int) -> float:
        """Move the average towards ``model``'s weights (an unwrapped model of the same
        architecture); returns the ``beta`` used."""
        beta = ema_beta(self.settings, images_seen, batch_images)
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.copy_(current.detach().lerp(average, beta))  # beta * avg + (1 - beta) * cur
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)
        self.updates += 1
        return beta

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
