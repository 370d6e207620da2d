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

__all__ = ["sample", "decode", "decode_fixed_point", "draw"]


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


def _rule_side_values(model: ImageTransformer, side, batch: int) -> torch.Tensor:
    """The side values ``(B, N)`` (model order) a temperature-0 decoding rule compares with."""
    side_values = model.side_values(side, batch)
    if side_values is None:
        raise ValueError("a decoding rule needs a model with side values (an anchored "
                         "decoder's anchors)")
    return side_values


@torch.no_grad()
def decode(model: ImageTransformer, batch: int, *, temperature: float = 1.0,
           labels: torch.Tensor | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, return_outputs: bool = False,
           progress: bool = False, context: torch.Tensor | None = None, side=None,
           rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           constraint=None):
    """Sample ``batch`` images in one batch.

    ``context`` ``(B, Nc, Dc)`` is the encoder output for a decoder built with ``context_dim``
    (super-resolution); ``side`` is the side information of a model that takes it (an anchored
    super-resolution decoder's anchors, :class:`imgtx.sr.anchor.AnchoredDecoder`).

    ``rule``: at temperature 0 only, chooses each value instead of argmax from the head outputs
    ``(B, 256 | 10K)`` and this position's side values ``(B, ...)`` (model order), e.g.
    :class:`imgtx.sr.anchor.StayNearAnchor`. Ignored at temperatures above 0.

    ``constraint``: restricts each position to an interval of values that depends on the earlier
    ones, and draws from the truncated distribution (``bounds(values, positions, rows)`` and
    ``choose(...)``, as :class:`imgtx.sr.blockmean.BlockMeanConstraint`).

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
        side_values = _rule_side_values(model, side, batch)  # (B, N) model order
    for t in tqdm(range(n), desc="sampling", unit="pos", disable=not progress, leave=False):
        if decoder is not None:
            out = decoder.outputs()  # (B, 256 | 10K)
        else:
            images = _images_from_values(model, values)
            out = model.to_sequence(model(images, labels, context, side))[:, t]
        if constraint is not None:
            lo, hi = (bound[:, 0] for bound in constraint.bounds(values, slice(t, t + 1)))
            values[:, t] = constraint.choose(
                out, lo, hi, temperature=temperature, generator=generator, rule=rule,
                side=None if side_values is None else side_values[:, t])
        elif side_values is not None:
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


@torch.no_grad()
def decode_fixed_point(model: ImageTransformer, initial: torch.Tensor, *,
                       rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
                       side=None, max_iterations: int | None = None, progress: bool = False,
                       stats: dict | None = None, constraint=None) -> torch.Tensor:
    """Temperature-0 decoding by fixed-point (Jacobi) iteration: the same images as
    :func:`decode` at ``temperature=0``, from whole-sequence forward passes instead of one
    position at a time.

    Greedy decoding maps a prefix to the next value: ``x_t = choose(model(x_<t))``, with
    ``choose`` argmax (DMOL: :func:`imgtx.likelihood.dmol_sample` at temperature 0) or ``rule``
    (which also sees the position's side values). Start from a
    guess ``initial`` ``(B, 3, H, W)`` uint8 and repeat ``x <- choose(model(x))`` at every
    position at once (one causal forward pass) until nothing changes. Position t is final once
    positions < t are, so the iteration reaches the sequential result after at most N + 1
    passes, and a fixed point *is* that result: each value is then the choice given its own
    prefix (Song et al. 2021, "Accelerating Feedforward Computation via Parallel Nonlinear
    Equation Solving"; Santilli et al. 2023, "Accelerating Transformer Inference for
    Translation via Parallel Decoding"). It pays when the guess is mostly right: an anchored
    super-resolution decoder started from its anchors leaves them at few subpixels, and most
    images stop after one or two passes. Rows are independent: each leaves the batch at its own
    fixed point, so later passes run on the rows still changing.

    Equality with :func:`decode`: the pass computes each position's outputs from the same
    prefix as the ``use_cache=False`` path of :func:`decode` does; the KV-cached path agrees
    with those outputs to float rounding (tests/test_sampling_speed.py).

    ``constraint``: as in :func:`decode`; each position's interval comes from the current
    guess's earlier values, so the fixed point is again the sequential result.

    ``max_iterations`` (default N + 1) bounds the passes; rows still changing then raise.
    ``stats``, if given, receives ``passes`` (iterations) and ``row_passes`` (rows forwarded,
    summed over passes). Returns ``(B, 3, H, W)`` uint8.
    """
    was_training = model.training
    model.eval()
    config = model.config
    images = initial.to(torch.uint8).clone()
    batch = images.shape[0]
    side_values = _rule_side_values(model, side, batch) if rule is not None else None
    limit = config.sequence_length + 1 if max_iterations is None else max_iterations
    active = torch.arange(batch, device=images.device)
    passes = row_passes = 0

    def rows(t, index):
        return None if t is None else t[index]

    with tqdm(total=batch, desc="fixed point", unit="img", disable=not progress,
              leave=False) as bar:
        while len(active) and passes < limit:
            passes, row_passes = passes + 1, row_passes + len(active)
            current = images[active]
            out = model.to_sequence(model(current, rows(labels, active), rows(context, active),
                                          rows(side, active)))  # (b, N, 256)
            flat = out.flatten(0, 1)  # (b * N, 256 | 10K)
            if constraint is not None:
                sequence = model.to_sequence(model.targets(current))  # (b, N[, 3]) long
                lo, hi = (bound.flatten(0, 1) for bound in
                          constraint.bounds(sequence, rows=active))
                chosen = constraint.choose(
                    flat, lo, hi, temperature=0.0, rule=rule,
                    side=None if rule is None else side_values[active].flatten(0, 1))
            elif rule is not None:
                chosen = rule(flat, side_values[active].flatten(0, 1))
            else:
                chosen = draw(flat, config.likelihood, 0.0, None)  # argmax | the DMOL mode
            new = _images_from_values(model, chosen.view(len(active), -1, *chosen.shape[1:]))
            changed = (new != current).flatten(1).any(dim=1)
            images[active] = new
            bar.update(int((~changed).sum()))
            active = active[changed]
    model.train(was_training)
    if stats is not None:
        stats.update(passes=passes, row_passes=row_passes)
    if len(active):
        raise RuntimeError(f"fixed-point decoding did not converge in {limit} passes "
                           f"({len(active)} images still changing)")
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
