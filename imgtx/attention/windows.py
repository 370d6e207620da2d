"""Window attention on a token grid (Liu et al. 2021, "Swin Transformer", sec. 3.2): each token
sees the tokens of its ``window x window`` square, optionally after a cyclic shift of the grid.
Non-causal (the GAN generators and discriminators use it); tokens in raster order. See
:mod:`imgtx.attention.patterns` for what a pattern provides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgtx.attention.blocks import Blocks, fold_bias
from imgtx.attention.patterns import Pattern

__all__ = ["Window", "shifted_window"]


@dataclass(frozen=True)
class Window(Pattern):
    """Non-overlapping ``window x window`` attention on an ``(height, width)`` token grid.

    Tokens are in raster order. With ``shift > 0`` the grid is cyclically rolled by ``-shift`` in
    both directions before partitioning (Swin); with ``mask_wraparound`` tokens that were wrapped
    around from the opposite edge are not allowed to see each other inside a window, as in Swin.
    An additive bias for this pattern is *window-local*: trailing shape ``(window^2, window^2)``,
    the same for every window (e.g. a relative position bias).
    """

    height: int
    width: int
    window: int
    shift: int = 0
    mask_wraparound: bool = True

    def __post_init__(self) -> None:
        if self.window < 1 or self.height % self.window or self.width % self.window:
            raise ValueError(
                f"Window attention needs the {self.height}x{self.width} grid to be divisible by "
                f"the window size {self.window}"
            )
        if not 0 <= self.shift < self.window:
            raise ValueError(f"window shift must be in [0, {self.window}), got {self.shift}")

    @property
    def length(self) -> int:
        return self.height * self.width

    def check_length(self, num_queries: int, num_keys: int) -> None:
        self.check_grid_length(num_queries, num_keys, "tokens")

    def _window_ids(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per token (raster order): window id, slot inside its window, wrap-around region."""
        w, s = self.window, self.shift
        y = torch.arange(self.height).repeat_interleave(self.width)
        x = torch.arange(self.width).repeat(self.height)
        ys, xs = (y - s) % self.height, (x - s) % self.width  # coordinates on the rolled grid
        window_id = (ys // w) * (self.width // w) + xs // w
        slot = (ys % w) * w + xs % w

        def region(coord: torch.Tensor, size: int) -> torch.Tensor:
            # Swin's three slices of the rolled grid: [0, size-w), [size-w, size-s), [size-s, size)
            return (coord >= size - w).long() + (coord >= size - s).long()

        if s and self.mask_wraparound:
            label = region(ys, self.height) * 3 + region(xs, self.width)
        else:
            label = torch.zeros_like(y)
        return window_id, slot, label

    def dense_mask(self, num_queries: int, num_keys: int) -> torch.Tensor:
        self.check_length(num_queries, num_keys)
        window_id, _, label = self._window_ids()
        return (window_id[:, None] == window_id[None, :]) & (label[:, None] == label[None, :])

    def window_mask(self) -> torch.Tensor | None:
        """``(num_windows, w*w, w*w)`` bool for the wrap-around masking, or None if not needed."""
        if not (self.shift and self.mask_wraparound):
            return None
        w = self.window
        rolled = torch.arange(self.length).view(self.height, self.width)
        rolled = torch.roll(rolled, shifts=(-self.shift, -self.shift), dims=(0, 1))
        windows = rolled.view(self.height // w, w, self.width // w, w).permute(0, 2, 1, 3)
        token = windows.reshape(-1, w * w)  # (nw, w*w) raster token index of each window slot
        _, _, label = self._window_ids()
        slot_label = label[token]
        return slot_label[:, :, None] == slot_label[:, None, :]

    def dense_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """Expand a window-local bias ``(..., w*w, w*w)`` to the dense ``(..., N, N)`` layout."""
        window_id, slot, _ = self._window_ids()
        window_id, slot = window_id.to(bias.device), slot.to(bias.device)
        dense = bias[..., slot[:, None], slot[None, :]]
        same = window_id[:, None] == window_id[None, :]
        return dense.masked_fill(~same, 0.0)

    def blocks(self, q, k, v, bias=None):
        b, h, n, e = q.shape
        w, s = self.window, self.shift
        gh, gw = self.height // w, self.width // w

        def partition(t: torch.Tensor) -> torch.Tensor:
            grid = t.reshape(b, h, self.height, self.width, e)
            if s:
                grid = torch.roll(grid, shifts=(-s, -s), dims=(2, 3))
            grid = grid.reshape(b, h, gh, w, gw, w, e).permute(0, 1, 2, 4, 3, 5, 6)
            return grid.reshape(b * h, gh * gw, w * w, e)  # (G, windows, w*w, E)

        def merge(out: torch.Tensor) -> torch.Tensor:
            grid = out.reshape(b, h, gh, gw, w, w, e).permute(0, 1, 2, 4, 3, 5, 6)
            grid = grid.reshape(b, h, self.height, self.width, e)
            if s:
                grid = torch.roll(grid, shifts=(s, s), dims=(2, 3))
            return grid.reshape(b, h, n, e)

        window_mask = self.window_mask()
        mask = None if window_mask is None else window_mask.to(q.device)
        bias4 = None if bias is None else fold_bias(bias.unsqueeze(-3), b, h)
        return Blocks(partition(q), partition(k), partition(v), mask, bias4, False, merge)


def shifted_window(height: int, width: int, window: int) -> Window:
    """The Swin shifted-window pattern: a half-window cyclic shift."""
    return Window(height, width, window, shift=window // 2)
