"""Attention backends: *how* a pattern is computed.

Every backend computes ``softmax(q k^T * scale + bias, masked by the pattern) v`` for the same
patterns and must agree with :func:`reference_attention` (dense, float64).

The fast backends share one step, :func:`to_blocks`: the pattern rewrites itself as many small
dense problems (``Pattern.blocks``) - each query block against only its own memory - so that the
cost is linear in the sequence length. The kernel applied to those blocks is then SDPA
(``"blocked"``), xformers' ``memory_efficient_attention`` (``"xformers"``, CUDA) or FlexAttention
(``"flex"``). No function here depends on which pattern it computes.

Shapes (einstein names used in comments):
    B batch, H heads, N sequence length, E head dim,
    G = B*H folded, nb number of blocks, Q queries per block, M keys per block.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from imgtx.attention.blocks import Blocks, causal_mask
from imgtx.attention.patterns import Pattern

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "attend",
    "available_backends",
    "reference_attention",
    "resolve_backend",
    "to_blocks",
]

BACKENDS = ("auto", "blocked", "xformers", "flex", "reference")


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run here (missing package, CPU tensors, ...)."""


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                        bias: torch.Tensor | None = None,
                        scale: float | None = None) -> torch.Tensor:
    """Dense masked attention in float64: the obviously-correct definition. O(N^2) memory.

    q ``(B, H, Nq, E)``, k/v ``(B, H, Nk, E)``, bias broadcastable to ``(B, H, Nq, Nk)`` (window
    patterns: ``(..., w*w, w*w)``). Returns float64 ``(B, H, Nq, E)``.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    pattern.check_length(nq, nk)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if bias is not None:
        scores = scores + pattern.dense_bias(bias).double()
    mask = pattern.dense_mask(nq, nk).to(q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double()


# --------------------------------------------------------------------------------------------
# Blocked layout shared by the fast backends
# --------------------------------------------------------------------------------------------


def to_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
              bias: torch.Tensor | None = None) -> Blocks:
    """Rewrite ``attention(q, k, v, pattern, bias)`` as dense attention over blocks
    (``pattern.blocks`` after checking the lengths and the bias).

    Never builds an N x N tensor for a local pattern (unless the caller passed a dense bias).
    """
    pattern.check_length(q.shape[-2], k.shape[-2])
    if bias is not None and bias.dim() < 2:
        raise ValueError(f"attention bias must have at least 2 dims (..., Nq, Nk), got shape "
                         f"{tuple(bias.shape)}")
    return pattern.blocks(q, k, v, bias)


def combined_bias(blocks: Blocks, dtype: torch.dtype) -> torch.Tensor | None:
    """Mask and bias folded into one additive float tensor (or None when there is neither)."""
    if blocks.mask is None and blocks.bias is None:
        return None
    if blocks.bias is None:
        zero = torch.zeros((), dtype=dtype, device=blocks.q.device)
        return zero.masked_fill(~blocks.mask, float("-inf")) if blocks.mask.dim() else zero
    out = blocks.bias.to(dtype)
    if blocks.mask is not None:
        out = out.masked_fill(~blocks.mask, float("-inf"))
    return out


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def _sdpa(blocks: Blocks, dropout_p: float, scale: float) -> torch.Tensor:
    if blocks.bias is None:
        attn_mask = blocks.mask  # bool, True = visible; broadcast by SDPA
    else:
        attn_mask = combined_bias(blocks, blocks.q.dtype)
    if attn_mask is not None and attn_mask.dim() == 3:
        # (nb, Q, M) -> (1, nb, Q, M): SDPA's fused CPU kernel takes only 2-D or 4-D masks; with
        # a 3-D one it falls back to the math path, which materialises every block's scores.
        attn_mask = attn_mask.unsqueeze(0)
    return F.scaled_dot_product_attention(blocks.q, blocks.k, blocks.v, attn_mask=attn_mask,
                                          dropout_p=dropout_p, is_causal=blocks.causal,
                                          scale=scale)


def _xformers_ops():
    try:
        import xformers.ops as xops
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise BackendUnavailable(
            "attention backend 'xformers' needs the xformers package: pip install 'imgtx[gpu]' "
            "(CUDA only); or use backend='blocked'") from err
    return xops


def _xformers(blocks: Blocks, dropout_p: float, scale: float) -> torch.Tensor:  # pragma: no cover
    xops = _xformers_ops()
    g, nb, qn, e = blocks.q.shape
    m = blocks.k.shape[2]
    # xformers layout is [batch, seq, heads, dim]: blocks play the part of heads.
    q, k, v = (t.transpose(1, 2) for t in (blocks.q, blocks.k, blocks.v))
    if blocks.causal:
        attn_bias = xops.LowerTriangularMask()
    else:
        additive = combined_bias(blocks, blocks.q.dtype)
        if additive is None:
            attn_bias = None
        else:
            # xformers wants a tensor bias whose last dim is 8-aligned in memory: allocate padded.
            padded = torch.empty(g, nb, qn, (m + 7) // 8 * 8, dtype=q.dtype, device=q.device)
            padded[..., :m] = additive.expand(g, nb, qn, m)
            attn_bias = padded[..., :m]
    out = xops.memory_efficient_attention(q, k, v, attn_bias=attn_bias, p=dropout_p, scale=scale)
    return out.transpose(1, 2)


_COMPILED_FLEX = None


def _flex_kernel(device: torch.device):
    """Compiled FlexAttention on CUDA (a fused kernel); eager on CPU (forward only, unfused:
    compiling there costs ~20 s per shape, more than the small blocks save)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _COMPILED_FLEX is None:  # pragma: no cover - CUDA only
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX  # pragma: no cover


def _flex(blocks: Blocks, dropout_p: float, scale: float) -> torch.Tensor:
    if dropout_p:
        raise BackendUnavailable("FlexAttention has no attention dropout; use backend='blocked' "
                                 "for training with attention dropout")
    additive = combined_bias(blocks, blocks.q.dtype)
    if blocks.causal:
        qn = blocks.q.shape[2]
        additive = causal_mask(qn, qn, blocks.q.device)
        additive = torch.zeros((), dtype=blocks.q.dtype, device=blocks.q.device).masked_fill(
            ~additive, float("-inf"))
    score_mod = None
    if additive is not None:
        shape = (blocks.q.shape[0], blocks.q.shape[1], blocks.q.shape[2], blocks.k.shape[2])
        table = additive.expand(shape)

        def score_mod(score, g, block, q_idx, kv_idx):
            return score + table[g, block, q_idx, kv_idx]

    q, k, v = blocks.q, blocks.k, blocks.v
    if q.device.type != "cuda":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise BackendUnavailable(
                "FlexAttention has no backward pass on CPU; use backend='blocked' for training "
                "on CPU, or run flex under torch.no_grad() for inference")
        # torch refuses CPU inputs with requires_grad even under no_grad, and views of a leaf
        # keep that flag; nothing is recorded here, so detaching changes nothing.
        q, k, v = q.detach(), k.detach(), v.detach()
    kernel = _flex_kernel(q.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return kernel(q, k, v, score_mod=score_mod, scale=scale)


_KERNELS = {"blocked": _sdpa, "xformers": _xformers, "flex": _flex}


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def _has_flex() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _has_xformers() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` on this machine (``"auto"`` excluded)."""
    device = torch.device(device)
    names = ["blocked", "reference"]
    if _has_flex():
        names.append("flex")
    if device.type == "cuda" and _has_xformers():
        names.append("xformers")
    return names


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """Map ``"auto"`` to a concrete backend; raise BackendUnavailable for one that cannot run.

    ``auto`` is the blocked SDPA backend everywhere: it supports every pattern, dropout and
    gradients on CPU and GPU. xformers and FlexAttention are opt-in.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "blocked"
    if backend == "xformers":
        if q.device.type != "cuda":
            raise BackendUnavailable(
                f"attention backend 'xformers' runs on CUDA only, but the tensors are on "
                f"{q.device.type}; use backend='blocked' (the default) here")
        _xformers_ops()
    if backend == "flex":
        if not _has_flex():
            raise BackendUnavailable("attention backend 'flex' needs torch>=2.5 "
                                     "(torch.nn.attention.flex_attention)")
        if q.device.type != "cuda" and torch.is_grad_enabled() and q.requires_grad:
            raise BackendUnavailable(
                "FlexAttention has no backward pass on CPU; use backend='blocked' for training "
                "on CPU, or run flex under torch.no_grad() for inference")
    return backend


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, *,
           bias: torch.Tensor | None = None, dropout_p: float = 0.0, scale: float | None = None,
           backend: str = "auto") -> torch.Tensor:
    """Attention of ``q`` over ``k, v`` restricted to ``pattern``.

    Args:
        q: ``(B, H, Nq, E)``; k, v: ``(B, H, Nk, E)``.
        pattern: a :mod:`imgtx.attention.patterns` pattern (Full also serves cross-attention).
        bias: optional additive per-head bias, broadcastable to ``(B, H, Nq, Nk)``; for Window
            patterns it is window-local, ``(..., w*w, w*w)``.
        dropout_p: dropout on the attention weights (pass 0 at eval time).
        scale: logit scale, default ``E ** -0.5``.
        backend: ``auto`` | ``blocked`` | ``xformers`` | ``flex`` | ``reference``.

    Returns:
        ``(B, H, Nq, E)`` in q's dtype.
    """
    name = resolve_backend(backend, q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if name == "reference":
        return reference_attention(q, k, v, pattern, bias, scale).to(q.dtype)
    blocks = to_blocks(q, k, v, pattern, bias)
    kernel = _KERNELS[name]
    out = kernel(blocks, dropout_p, scale)  # (G, nb, Q, E)
    if blocks.head is not None:
        out = torch.cat([kernel(blocks.head, dropout_p, scale), out], dim=1)
    return blocks.restore(out)
