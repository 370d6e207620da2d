"""Sampling from an :class:`~imgtx.model.ImageTransformer`: draw a value, feed it back.

The model computes; this module only draws. The default path asks the model's
:class:`~imgtx.model.IncrementalDecoder` for one position at a time (each layer's KV cache), so a
local-1D model costs O(N*b) per image instead of O(N^2) (T2T re-ran the whole model for every
subpixel). The ``use_cache=False`` path does exactly that full recompute; it exists to check the
cache against and to measure the speed-up. Both walk the model's order: raster for 1D,
block-raster for 2D.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from imgtx.likelihood import dmol_sample
from imgtx.model import ImageTransformer

__all__ = ["sample", "decode", "draw"]


def draw(outputs: torch.Tensor, likelihood: str, temperature: float,
         generator: torch.Generator | None) -> torch.Tensor:
    """One value per row of head outputs ``(B, 256 | 10K)`` -> ``(B,)`` long | ``(B, 3)`` long.

    Categorical: multinomial over ``softmax(logits / temperature)``; temperature 0 is argmax.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if likelihood == "dmol":
        return dmol_sample(outputs, temperature, generator).long()
    if temperature == 0:
        return outputs.argmax(dim=-1)
    logits = outputs.float()
    probs = torch.softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _images_from_values(model: ImageTransformer, values: torch.Tensor) -> torch.Tensor:
    """Model-order values ``(B, N)`` or ``(B, N, 3)`` -> images ``(B, 3, H, W)`` uint8."""
    size = model.config.image_size
    raster = model.to_raster(values)
    return raster.reshape(raster.shape[0], size, size, 3).permute(0, 3, 1, 2).to(torch.uint8)


@torch.no_grad()
def decode(model: ImageTransformer, batch: int, *, temperature: float = 1.0,
           labels: torch.Tensor | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, return_outputs: bool = False,
           progress: bool = False, context: torch.Tensor | None = None, side=None,
           rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
    """Sample ``batch`` images in one batch.

    ``context`` ``(B, Nc, Dc)`` is the encoder output for a decoder built with ``context_dim``
    (super-resolution); ``side`` is the side information of a model that takes it (an anchored
    super-resolution decoder's anchors, :class:`imgtx.sr.anchor.AnchoredDecoder`).

    ``rule``: at temperature 0 only, chooses each value instead of argmax from the head outputs
    ``(B, 256)`` and this position's side values ``(B,)`` (model order), e.g.
    :class:`imgtx.sr.anchor.StayNearAnchor`. Ignored at temperatures above 0.

    Returns images ``(B, 3, H, W)`` uint8, and with ``return_outputs`` also the head outputs used
    at every step, in model order ``(B, N, 256 | 10K)`` (for checking cache against recompute).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    config = model.config
    n = config.sequence_length
    dmol = config.likelihood == "dmol"
    values = torch.zeros((batch, n, 3) if dmol else (batch, n), dtype=torch.long, device=device)
    outputs_seen = []
    decoder = None
    if use_cache:
        decoder = model.incremental_decoder(batch, labels=labels, context=context, side=side)
    side_values = None
    if rule is not None and temperature == 0:
        side_values = model.side_values(side, batch)  # (B, N, ...) model order
        if side_values is None:
            raise ValueError("a decoding rule needs a model with side values (an anchored "
                             "decoder's anchors)")
    for t in tqdm(range(n), desc="sampling", unit="pos", disable=not progress, leave=False):
        if decoder is not None:
            out = decoder.outputs()  # (B, 256 | 10K)
        else:
            images = _images_from_values(model, values)
            out = model.to_sequence(model(images, labels, context, side))[:, t]
        if side_values is not None:
            values[:, t] = rule(out, side_values[:, t])
        else:
            values[:, t] = draw(out, config.likelihood, temperature, generator)
        if decoder is not None:
            decoder.feed(values[:, t])
        if return_outputs:
            outputs_seen.append(out)
    model.train(was_training)
    images = _images_from_values(model, values)
    if return_outputs:
        return images, torch.stack(outputs_seen, dim=1)
    return images


def sample(model: ImageTransformer, num_images: int, *, temperature: float = 1.0,
           labels: torch.Tensor | int | None = None, batch_size: int = 16,
           use_cache: bool = True, seed: int | None = None, progress: bool = True
           ) -> torch.Tensor:
    """Sample ``num_images`` images ``(num_images, 3, H, W)`` uint8, in batches.

    ``labels``: one class id for all, or ``(num_images,)`` ids (class-conditional models only).
    ``seed`` makes the draw reproducible.
    """
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if labels is not None:
        labels = torch.as_tensor(labels, device=device).long()
        if labels.dim() == 0:
            labels = labels.expand(num_images)
    chunks = []
    starts = range(0, num_images, batch_size)
    for start in tqdm(starts, desc="batches", disable=not progress or len(starts) == 1):
        count = min(batch_size, num_images - start)
        chunk_labels = None if labels is None else labels[start : start + count]
        chunks.append(decode(model, count, temperature=temperature, labels=chunk_labels,
                             use_cache=use_cache, generator=generator, progress=progress))
    return torch.cat(chunks)
