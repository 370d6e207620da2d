"""Attention modules every imgtx model is built from.

Models state a pattern; :class:`MultiHeadAttention` projects, calls :func:`attend` and leaves the
kernel choice to the backend. Shapes: B batch, N positions, D model width, H heads, E head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from imgtx.attention.backends import BACKENDS, attend
from imgtx.attention.cache import KVCache
from imgtx.attention.patterns import Pattern

__all__ = ["MultiHeadAttention", "RelativePositionBias", "set_backend"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention over a pattern; self-attention, or cross-attention with ``context``.

    Args:
        dim: model width D of the queries (and of the output).
        heads: number of heads H.
        pattern: what each query may see (see :mod:`imgtx.attention.patterns`).
        context_dim: width of the keys/values' source for cross-attention (default ``dim``).
        attn_dim: total key/value width over all heads (default ``dim``; T2T's DMOL config uses
            512 with ``dim=256``).
        qkv_bias: biases in the q/k/v projections.
        dropout: dropout on the attention weights during training.
        backend: attention backend (``auto`` | ``blocked`` | ``xformers`` | ``flex`` |
            ``reference``).
    """

    def __init__(self, dim: int, heads: int, pattern: Pattern, *, context_dim: int | None = None,
                 attn_dim: int | None = None, qkv_bias: bool = False, dropout: float = 0.0,
                 backend: str = "auto") -> None:
        super().__init__()
        attn_dim = attn_dim or dim
        if attn_dim % heads:
            raise ValueError(f"attention width {attn_dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, attn_dim // heads
        self.pattern, self.dropout, self.backend = pattern, dropout, backend
        self.is_cross = context_dim is not None
        self.to_q = nn.Linear(dim, attn_dim, bias=qkv_bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * attn_dim, bias=qkv_bias)
        self.proj = nn.Linear(attn_dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, E)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))  # (B, N, D)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a cross-attention context ``(B, Nk, Dc)``, each ``(B, H, Nk, E)``;
        compute once and pass as ``context_kv`` when decoding step by step."""
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                bias: torch.Tensor | None = None,
                context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` ``(B, N, D)`` -> ``(B, N, D)``. ``bias``: additive, see :func:`attend`."""
        q = self._split(self.to_q(x))
        if context_kv is not None:
            k, v = context_kv
        else:
            k, v = self.context_kv(x if context is None else context)
        out = attend(q, k, v, self.pattern, bias=bias, backend=self.backend,
                     dropout_p=self.dropout if self.training else 0.0)
        return self._merge(out)

    def new_cache(self, batch: int, length: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> KVCache:
        """An empty KV cache for decoding ``length`` positions of this layer's pattern."""
        return self.pattern.new_cache(batch, self.heads, self.head_dim, length, device, dtype)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Self-attention output for the next position only: ``x`` ``(B, 1, D)`` -> ``(B, 1, D)``.

        Equal to ``forward`` at that position given the same earlier inputs.
        """
        q = self._split(self.to_q(x))
        k, v = (self._split(t) for t in self.to_kv(x).chunk(2, dim=-1))
        return self._merge(cache.step(q, k, v))


def set_backend(module: nn.Module, backend: str) -> int:
    """Compute every :class:`MultiHeadAttention` inside ``module`` with ``backend`` (``auto`` |
    ``blocked`` | ``xformers`` | ``flex`` | ``reference``). The backend is a run-time choice,
    never part of a saved config. Returns the number of attention modules changed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    layers = [m for m in module.modules() if isinstance(m, MultiHeadAttention)]
    for layer in layers:
        layer.backend = backend
    return len(layers)


class RelativePositionBias(nn.Module):
    """Learned relative position bias for ``window x window`` attention (Swin; TransGAN ``*_rp``).

    A table ``((2w-1)^2, heads)`` indexed by the relative offset (dy, dx) of two tokens in a window.
    ``forward()`` returns the window-local bias ``(heads, w*w, w*w)`` to pass as ``bias=``.
    """

    def __init__(self, window: int, heads: int) -> None:
        super().__init__()
        self.window = window
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        y = torch.arange(window).repeat_interleave(window)
        x = torch.arange(window).repeat(window)
        dy = y[:, None] - y[None, :] + window - 1  # in [0, 2w-2]
        dx = x[:, None] - x[None, :] + window - 1
        self.register_buffer("index", dy * (2 * window - 1) + dx, persistent=False)

    def forward(self) -> torch.Tensor:
        # Gathered head-major from the transposed view, so the (H, w*w, w*w) bias comes out
        # contiguous; index_select's backward is an index_add (no sort, unlike an indexed put).
        n = self.index.shape[0]
        return self.table.t().index_select(1, self.index.view(-1)).view(-1, n, n)
