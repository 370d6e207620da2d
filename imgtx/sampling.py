"""Decoding an :class:`~imgtx.model.ImageTransformer`: choose a value, feed it back.

The model computes; this module walks the positions and lets a **decoding policy** choose each
value. A policy is any object with ``choose(outputs, position) -> values``: ``outputs`` are the
head outputs ``(b, n, 256 | 10K)`` at ``n`` positions, ``position`` (a :class:`Position`) says
which positions and batch rows they are and holds the values chosen so far, and the result is
``(b, n)`` long subpixels or ``(b, n, 3)`` long pixels (DMOL). :class:`Draw` (plain draws at a
temperature) is the default; a family adds its own policies without the decoder knowing it (the
super-resolution anchor rule, :class:`imgtx.sr.anchor.AnchorPolicy`, and the block-mean
truncation, :class:`imgtx.sr.blockmean.BlockMeanPolicy`).

:func:`decode` asks the model's :class:`~imgtx.model.IncrementalDecoder` for one position at a
time (each layer's KV cache), so a local-1D model costs O(N*b) per image instead of O(N^2)
(T2T re-ran the whole model for every subpixel). Its ``use_cache=False`` path does exactly that
full recompute, to check the cache against and to measure the speed-up.
:func:`decode_fixed_point` reaches the same temperature-0 result from whole-sequence passes. All
walk the model's order: raster for 1D, block-raster for 2D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from imgtx.likelihood import dmol_sample
from imgtx.model import ImageTransformer

__all__ = ["sample", "decode", "decode_fixed_point", "draw", "draws", "Draw", "Position",
           "DecodingPolicy"]


@dataclass
class Position:
    """Where a policy chooses: the model-order positions ``index`` of the batch rows ``rows``
    (indices into the decoded batch; None: all rows), and ``values`` ``(b, N)`` / ``(b, N, 3)``
    long, the values of those rows in model order (final before ``index``; later entries are the
    current guess, or zero)."""

    index: slice
    values: torch.Tensor
    rows: torch.Tensor | None = None


class DecodingPolicy(Protocol):
    """Chooses the values at some positions from the head outputs there (module docstring)."""

    def choose(self, outputs: torch.Tensor, position: Position) -> torch.Tensor:
        """``(b, n, 256 | 10K)`` -> ``(b, n)`` | ``(b, n, 3)`` long."""
        ...


def draw(outputs: torch.Tensor, likelihood: str, temperature: float,
         generator: torch.Generator | None) -> torch.Tensor:
    """One value per row of head outputs ``(M, 256 | 10K)`` -> ``(M,)`` long | ``(M, 3)`` long.

    Categorical: multinomial over ``softmax(logits / temperature)``; temperature 0 is argmax.
    DMOL: :func:`imgtx.likelihood.dmol_sample`.
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


def each_row(choose_rows, outputs: torch.Tensor, *per_position: torch.Tensor) -> torch.Tensor:
    """Apply a row-wise chooser ``(M, C), (M, ...) ... -> (M[, 3])`` to ``(b, n, C)`` outputs
    and ``(b, n, ...)`` per-position tensors; returns ``(b, n[, 3])``."""
    chosen = choose_rows(outputs.flatten(0, 1), *(t.flatten(0, 1) for t in per_position))
    return chosen.view(*outputs.shape[:2], *chosen.shape[1:])


@dataclass
class Draw:
    """The plain policy: a draw from each position's distribution at ``temperature`` (0: its
    most likely value; DMOL: the mode of the top mixture component), with ``generator``."""

    likelihood: str = "cat"
    temperature: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def choose(self, outputs: torch.Tensor, position: Position) -> torch.Tensor:
        """``(b, n, 256 | 10K)`` -> ``(b, n)`` | ``(b, n, 3)`` long."""
        return each_row(lambda rows: draw(rows, self.likelihood, self.temperature,
                                          self.generator), outputs)


def draws(model: ImageTransformer, temperature: float = 1.0,
          generator: torch.Generator | None = None) -> Draw:
    """:class:`Draw` for ``model``'s likelihood."""
    return Draw(model.config.likelihood, temperature, generator)


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
           policy: DecodingPolicy | None = None):
    """Decode ``batch`` images in one batch, one position at a time.

    ``policy`` chooses every value (default: :class:`Draw` at ``temperature`` with
    ``generator``). ``context`` ``(B, Nc, Dc)`` is the encoder output for a decoder built with
    ``context_dim`` (super-resolution); ``side`` is the side information of a model that takes
    it (an anchored super-resolution decoder's anchors).

    Returns images ``(B, 3, H, W)`` uint8, and with ``return_outputs`` also the head outputs used
    at every step, in model order ``(B, N, 256 | 10K)`` (for checking cache against recompute).
    """
    if policy is None:
        policy = draws(model, temperature, generator)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    config = model.config
    n = config.sequence_length
    per_position = (3,) if config.likelihood == "dmol" else ()
    values = torch.zeros(batch, n, *per_position, dtype=torch.long, device=device)
    outputs_seen = []
    decoder = None
    if use_cache:
        decoder = model.incremental_decoder(batch, labels=labels, context=context, side=side)
    for t in tqdm(range(n), desc="sampling", unit="pos", disable=not progress, leave=False):
        if decoder is not None:
            out = decoder.outputs()  # (B, 256 | 10K)
        else:
            images = _images_from_values(model, values)
            out = model.to_sequence(model(images, labels, context, side))[:, t]
        values[:, t] = policy.choose(out[:, None], Position(slice(t, t + 1), values))[:, 0]
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
                       policy: DecodingPolicy | None = None,
                       labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
                       side=None, max_iterations: int | None = None, progress: bool = False,
                       stats: dict | None = None) -> torch.Tensor:
    """Temperature-0 decoding by fixed-point (Jacobi) iteration: the same images as
    :func:`decode` with the same deterministic ``policy`` (default: argmax, :class:`Draw` at
    temperature 0), from whole-sequence forward passes instead of one position at a time.

    Greedy decoding maps a prefix to the next value: ``x_t = choose(model(x_<t))``. Start from a
    guess ``initial`` ``(B, 3, H, W)`` uint8 and repeat ``x <- choose(model(x))`` at every
    position at once (one causal forward pass) until nothing changes. Position t is final once
    positions < t are, so the iteration reaches the sequential result after at most N + 1
    passes, and a fixed point *is* that result: each value is then the choice given its own
    prefix (Song et al. 2021, "Accelerating Feedforward Computation via Parallel Nonlinear
    Equation Solving"; Santilli et al. 2023, "Accelerating Transformer Inference for
    Translation via Parallel Decoding"). It pays when the guess is mostly right: an anchored
    super-resolution decoder started from its anchors leaves them at few subpixels, and most
    images stop after one or two passes. Rows are independent: each leaves the batch at its own
    fixed point, so later passes run on the rows still changing. The policy sees the current
    guess as ``position.values`` (with ``position.rows`` the rows still changing), so a policy
    that reads earlier values (a truncation to an interval that depends on them) again reaches
    the sequential result.

    Equality with :func:`decode`: the pass computes each position's outputs from the same
    prefix as the ``use_cache=False`` path of :func:`decode` does; the KV-cached path agrees
    with those outputs to float rounding (tests/test_sampling_speed.py).

    ``max_iterations`` (default N + 1) bounds the passes; rows still changing then raise.
    ``stats``, if given, receives ``passes`` (iterations) and ``row_passes`` (rows forwarded,
    summed over passes). Returns ``(B, 3, H, W)`` uint8.
    """
    images = initial.to(torch.uint8).clone()
    batch = images.shape[0]
    if policy is None:
        policy = draws(model, 0.0)
    was_training = model.training
    model.eval()
    limit = model.config.sequence_length + 1 if max_iterations is None else max_iterations
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
                                          rows(side, active)))  # (b, N, 256 | 10K)
            guess = model.to_sequence(model.targets(current))  # (b, N[, 3]) long
            chosen = policy.choose(out, Position(slice(None), guess, active))
            new = _images_from_values(model, chosen)
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
    """Sample ``num_images`` images ``(num_images, 3, H, W)`` uint8, in batches: the same as
    :meth:`imgtx.model.ImageTransformer.generate`."""
    return model.generate(num_images, labels, temperature=temperature, seed=seed,
                          batch_size=batch_size, use_cache=use_cache, progress=progress)
