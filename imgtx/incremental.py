"""Decoding an :class:`~imgtx.model.ImageTransformer` one position at a time with each layer's KV
cache: what :mod:`imgtx.sampling` and :mod:`imgtx.codec` step through.

Shapes: B batch, N positions, D model width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from imgtx.fused_step import FusedStep
from imgtx.logistic import scale_pixels

if TYPE_CHECKING:
    from imgtx.model import ImageTransformer

__all__ = ["IncrementalDecoder", "one_thread"]


class IncrementalDecoder:
    """Runs an :class:`ImageTransformer` one position at a time, in model order, with each
    layer's KV cache: ``outputs()`` gives the head outputs at the next position and ``feed(value)``
    appends the value chosen there. The same hooks as :meth:`ImageTransformer.forward` make the
    inputs, so the outputs equal the full forward pass on the finished sequence. Call under
    ``torch.no_grad()`` with the model in eval mode.

    Cost per position: one query against each layer's cache (O(b) for local 1D blocks of b).
    With ``fused`` (default) plain layers run as :class:`imgtx.fused_step.FusedStep` (about half
    the ops a layer, same result to float rounding); ``compile`` also compiles their
    fixed-shape part with :func:`torch.compile` (off by default: it did not pay on CPU).
    """

    def __init__(self, model: ImageTransformer, batch: int, *,
                 labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 side=None, fused: bool = True, compile: bool = False) -> None:
        parameter = next(model.parameters())
        self.model, self.length, self.position = model, model.config.sequence_length, 0
        self.caches = [layer.attn.new_cache(batch, self.length, parameter.device,
                                            parameter.dtype) for layer in model.layers]
        self.context_kvs = model.context_kv(context)
        self.cond = model.condition(labels, batch)  # (B, 1, D) | None
        self.side = model.side_values(side, batch)  # (B, N, ...) | None
        self.positions = model.positions()  # (N, D)
        # The input contribution of the previous value: zero before the first position.
        self.previous = torch.zeros(batch, 1, model.config.hidden_size, device=parameter.device,
                                    dtype=parameter.dtype)
        self.waiting_for_value = False
        # neighbour_inputs / predictor: the values fed so far, scaled, model order, one zero slot
        # at the end (ImageTransformer.canvas_of).
        self.canvas = None
        if model.config.neighbour_inputs or model.config.predictor != "none":
            per_position = (3,) if model.config.likelihood == "dmol" else ()
            self.canvas = torch.zeros(batch, self.length + 1, *per_position,
                                      device=parameter.device, dtype=parameter.dtype)
        # Fused steps (imgtx.fused_step) when every layer is a plain one and the model is in
        # eval mode (dropout off); otherwise each layer's own step.
        self.fused = None
        if fused and not model.training and all(FusedStep.supports(layer)
                                                for layer in model.layers):
            self.fused = [FusedStep(layer, compile=compile) for layer in model.layers]

    def _here(self) -> tuple[slice, torch.Tensor | None]:
        here = slice(self.position, self.position + 1)
        return here, None if self.side is None else self.side[:, here]

    def outputs(self) -> torch.Tensor:
        """Head outputs at position ``self.position``: ``(B, 256 | 10K)``."""
        if self.waiting_for_value:
            raise RuntimeError("feed() the value chosen at this position before the next outputs()")
        if self.position >= self.length:
            raise IndexError(f"all {self.length} positions were decoded")
        model = self.model
        here, side = self._here()
        x = self.previous + self.positions[here]  # (B, 1, D)
        if model.neighbours is not None:
            x = x + model.neighbour_embeddings(self.canvas, here)
        own = model.position_inputs(model.channel[here], side)
        if own is not None:
            x = x + own
        if self.cond is not None:
            x = x + self.cond
        if self.fused is not None:
            x = x[:, 0]  # (B, D)
            for step, cache, context_kv in zip(self.fused, self.caches, self.context_kvs):
                x = step(x, cache, context_kv)  # (B, D)
            x = x[:, None]
        else:
            for layer, cache, context_kv in zip(model.layers, self.caches, self.context_kvs):
                x = layer.step(x, cache, context_kv)  # (B, 1, D)
        self.waiting_for_value = True
        return model.outputs_at(x, side, self.canvas, here)[:, 0]

    def feed(self, value: torch.Tensor) -> None:
        """The value chosen at position ``self.position``: ``(B,)`` long subpixels, or ``(B, 3)``
        long pixels (DMOL). Moves to the next position."""
        if not self.waiting_for_value:
            raise RuntimeError("call outputs() for this position before feed()")
        here, side = self._here()
        self.previous = self.model.input_embeddings(value[:, None], self.model.channel[here],
                                                    side)
        if self.canvas is not None:
            self.canvas[:, self.position] = scale_pixels(value, self.canvas.dtype)
        self.position += 1
        self.waiting_for_value = False


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op thread, then restore the caller's count.

    A cached decoding step is ~100 tiny ops, so more threads only add synchronisation; and a
    kernel split over threads can round its vectorised loop's tail differently, so computing with
    one thread makes the floats independent of the machine's thread count (the codec relies on
    that: encoder and decoder must agree bit for bit).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
