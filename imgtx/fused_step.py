"""One KV-cached decoding step of a :class:`~imgtx.transformer.TransformerLayer`, fused.

:meth:`TransformerLayer.step` runs the layer's modules as in training: 62 aten ops for a pre-norm
layer with cross-attention, views included (separate q and k/v projections, head split/merge
transposes, identity dropout and skip modules, ``(B, 1, D)`` views). A decoding step at small
batch is bound by that per-op overhead, not by arithmetic: the widths are small and there is one
query. :class:`FusedStep` does the same arithmetic in 30 ops on ``(B, D)`` rows:

* q, k and v from one matmul with the stacked weights ``[W_q; W_kv]``, and every linear as one
  ``addmm`` with its weight transposed once per decode;
* keys and values written straight into the cache's preallocated buffers, which hand back the
  visible window as views (:meth:`imgtx.attention.cache.KVCache.append`), attended without a mask;
* with one query, the heads' outputs ``(B, H, 1, E)`` are already in the merged ``(B, H*E)``
  order: no transpose or copy before the output projection;
* dropout (identity in eval mode) and identity skips are left out; norms are ``F.layer_norm``;
* one query per (batch, head) row: SDPA for few rows, plain batched matmuls for many
  (:data:`SDPA_MAX_ROWS`).

Only the layers that declare themselves ``fusable`` are fused: the layer checks its options
against a positive list in ``__init__`` (:data:`imgtx.transformer.FUSABLE_OPTIONS`: LayerNorm,
identity skips, no branch activation, no trunk or conditional norm), so an option this class does
not know is never fused. The result equals :meth:`TransformerLayer.step` to float rounding, for
every option combination (tests/test_fused_step.py).

Optionally, ``compile=True`` runs the fixed-shape parts (everything after the self-attention
kernel: output projection, cross-attention, FFN) through :func:`torch.compile`. The key window
grows by one every step, so the attention itself stays eager. On CPU this did not pay
(docs/sampling.md), so it is off by default.

Shapes: B batch, D model width, H heads, E head dim, A = H*E attention width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from imgtx.attention import KVCache
from imgtx.transformer import TransformerLayer

__all__ = ["FusedStep"]

# Below this many (batch x head) rows a step is bound by per-op overhead and SDPA's single fused
# call is fastest; above it, SDPA's CPU kernel (tiled for long query blocks) lost to plain batched
# matmuls for one query per row (docs/sampling.md).
SDPA_MAX_ROWS = 32


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One query per (batch, head): ``q`` ``(B, H, 1, E)`` over ``(B, H, M, E)`` keys/values ->
    ``(B, H, 1, E)``; softmax attention with scale ``E ** -0.5``."""
    if q.shape[0] * q.shape[1] < SDPA_MAX_ROWS:
        return F.scaled_dot_product_attention(q, keys, values)
    scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # (B, H, 1, M)
    return torch.matmul(torch.softmax(scores, dim=-1), values)


Norm = tuple[tuple[int, ...], torch.Tensor | None, torch.Tensor | None, float]


def _norm(module: nn.LayerNorm) -> Norm:
    return tuple(module.normalized_shape), module.weight, module.bias, module.eps


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor],
                                                                      torch.Tensor]:
    """``F.linear`` with the weight transposed once: ``addmm``/``mm`` on ``(B, in)`` rows."""
    transposed = weight.detach().t().contiguous()  # (in, out)
    if bias is None:
        return lambda x: torch.mm(x, transposed)
    bias = bias.detach()
    return lambda x: torch.addmm(bias, x, transposed)


def _activation(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(module, nn.ReLU):
        return F.relu
    if isinstance(module, nn.GELU):
        return lambda x: F.gelu(x, approximate=module.approximate)
    return module


class FusedStep:
    """The cached step of one layer as plain tensor ops on weights taken from the layer.

    Build it after the weights are final (once per decode); it holds references to the layer's
    parameters' values (transposed copies, and the stacked q/k/v weight).
    """

    @staticmethod
    def supports(layer: TransformerLayer) -> bool:
        """Whether ``layer`` declares itself fusable (and records no branch ratios, which only
        its own step does)."""
        return layer.fusable and not layer.record_ratios

    def __init__(self, layer: TransformerLayer, *, compile: bool = False) -> None:
        if not self.supports(layer):
            raise ValueError("this layer was built with options FusedStep does not reproduce "
                             "(see imgtx.transformer.FUSABLE_OPTIONS); use "
                             "TransformerLayer.step")
        attn = layer.attn
        self.pre_norm = layer.pre_norm
        self.heads, self.head_dim = attn.heads, attn.head_dim
        with torch.no_grad():
            w_qkv = torch.cat([attn.to_q.weight, attn.to_kv.weight])  # (3A, D)
            b_qkv = (None if attn.to_q.bias is None
                     else torch.cat([attn.to_q.bias, attn.to_kv.bias]))
        self.qkv = _linear(w_qkv, b_qkv)
        self.proj = _linear(attn.proj.weight, attn.proj.bias)
        self.attn_norm = _norm(layer.attn_norm)
        self.cross = None
        if layer.cross_attn is not None:
            cross = layer.cross_attn
            self.cross = (_linear(cross.to_q.weight, cross.to_q.bias),
                          _linear(cross.proj.weight, cross.proj.bias))
            self.cross_norm = _norm(layer.cross_norm)
        ffn = layer.ffn
        self.ffn = (_linear(ffn.fc1.weight, ffn.fc1.bias), _linear(ffn.fc2.weight, ffn.fc2.bias))
        self.act = _activation(ffn.act)
        self.ffn_norm = _norm(layer.ffn_norm)
        self._tail = torch.compile(self._tail_eager, dynamic=False) if compile else \
            self._tail_eager

    def _residual(self, x: torch.Tensor, norm: Norm,
                  branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``x + branch(norm(x))`` (pre-norm) or ``norm(x + branch(x))`` (post-norm)."""
        if self.pre_norm:
            return x + branch(F.layer_norm(x, *norm))
        return F.layer_norm(x + branch(x), *norm)

    def _cross(self, h: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor]
               ) -> torch.Tensor:
        to_q, proj = self.cross
        q = to_q(h).view(h.shape[0], self.heads, 1, self.head_dim)
        out = _attend(q, *context_kv)  # (B, H, 1, E)
        return proj(out.view(h.shape[0], -1))

    def _ffn(self, h: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.ffn
        return fc2(self.act(fc1(h)))

    def _tail_eager(self, x: torch.Tensor, attended: torch.Tensor, context_k, context_v
                    ) -> torch.Tensor:
        """From the self-attention heads' output ``(B, A)`` to the layer output ``(B, D)``."""
        branch = self.proj(attended)
        x = x + branch if self.pre_norm else F.layer_norm(x + branch, *self.attn_norm)
        if self.cross is not None:
            x = self._residual(x, self.cross_norm, lambda h: self._cross(h, (context_k,
                                                                              context_v)))
        return self._residual(x, self.ffn_norm, self._ffn)

    def __call__(self, x: torch.Tensor, cache: KVCache,
                 context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The next position: ``x`` ``(B, D)`` -> ``(B, D)``; appends to ``cache``.

        ``context_kv``: the layer's cross-attention keys/values ``(B, H, Nc, E)`` each."""
        if self.cross is not None and context_kv is None:
            raise ValueError("this layer has cross-attention: pass the context's keys/values")
        b = x.shape[0]
        h = F.layer_norm(x, *self.attn_norm) if self.pre_norm else x
        qkv = self.qkv(h).view(b, 3, self.heads, self.head_dim)
        keys, values = cache.append(qkv[:, 1], qkv[:, 2])  # (B, H, M, E) views
        attended = _attend(qkv[:, 0, :, None], keys, values)
        context_k, context_v = context_kv if context_kv is not None else (None, None)
        return self._tail(x, attended.view(b, -1), context_k, context_v)
