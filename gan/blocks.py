"""GAN-side building blocks around the shared :class:`imgtx.transformer.TransformerLayer`:
noise injection, the TransGAN block (relative position bias, window or global attention,
optional cross-attention to a latent embedding), activation checkpointing, token-grid
up/downsampling and patch embeddings.

Shapes: B batch, N = side^2 tokens in raster order, D width, H heads, w window side,
Nc context tokens.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from imgtx.attention import Full, MultiHeadAttention, RelativePositionBias, Window
from imgtx.training.draws import randn_for_batch
from imgtx.transformer import TransformerLayer

__all__ = ["NoiseInjection", "TokenNoise", "TransGANBlock", "run_blocks", "tokens_to_map",
           "map_to_tokens", "upsample_tokens", "pixel_shuffle_tokens", "bicubic_tokens",
           "updown_tokens", "avg_pool_tokens", "PatchEmbed", "trunc_normal_param"]


def trunc_normal_param(*shape: int, std: float = 0.02) -> nn.Parameter:
    """A parameter drawn from N(0, std^2) truncated at +-2 (absolute), as timm's
    ``trunc_normal_`` that TransGAN uses for its position embeddings and cls tokens."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=std))


# --------------------------------------------------------------------------------------------
# Token grids
# --------------------------------------------------------------------------------------------


def tokens_to_map(x: torch.Tensor, side: int) -> torch.Tensor:
    """``(B, side*side, D)`` raster tokens -> ``(B, D, side, side)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W)`` -> ``(B, H*W, D)`` raster tokens."""
    return x.flatten(2).transpose(1, 2)


def pixel_shuffle_tokens(x: torch.Tensor, side: int) -> torch.Tensor:
    """PixelShuffle(2) on a token grid: ``(B, side^2, D)`` -> ``(B, 4 side^2, D/4)``
    (TransGAN ``pixel_upsample``)."""
    return map_to_tokens(F.pixel_shuffle(tokens_to_map(x, side), 2))


def bicubic_tokens(x: torch.Tensor, side: int) -> torch.Tensor:
    """x2 bicubic upsampling at constant width: ``(B, side^2, D)`` -> ``(B, 4 side^2, D)``
    (TransGAN ``bicubic_upsample``)."""
    grid = F.interpolate(tokens_to_map(x, side), scale_factor=2, mode="bicubic")
    return map_to_tokens(grid)


def updown_tokens(x: torch.Tensor, side: int) -> torch.Tensor:
    """Anti-alias smoothing at constant size: bicubic x4 then 4x4 average pooling
    (TransGAN ``Celeba256_gen.updown``). ``(B, side^2, D)`` -> ``(B, side^2, D)``."""
    grid = F.interpolate(tokens_to_map(x, side), scale_factor=4, mode="bicubic")
    return map_to_tokens(F.avg_pool2d(grid, 4))


def upsample_tokens(x: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """Double the grid by ``mode``: ``pixel_shuffle`` | ``bicubic`` | ``updown_pixel_shuffle``."""
    if mode == "bicubic":
        return bicubic_tokens(x, side)
    if mode == "updown_pixel_shuffle":
        x = updown_tokens(x, side)
    return pixel_shuffle_tokens(x, side)


def avg_pool_tokens(x: torch.Tensor, side: int) -> torch.Tensor:
    """2x2 average pooling of a token grid: ``(B, side^2, D)`` -> ``(B, side^2/4, D)``."""
    return map_to_tokens(F.avg_pool2d(tokens_to_map(x, side), 2))


class PatchEmbed(nn.Module):
    """Patch embedding: ``Conv2d(3, D, kernel, stride, padding)`` then raster tokens.

    ``(B, 3, H, W)`` -> ``(B, (H/stride)^2, D)``. Xavier-uniform weights (TransGAN
    ``weights_init``, ``--init_type xavier_uniform``).
    """

    def __init__(self, dim: int, kernel: int, stride: int, padding: int = 0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel, stride, padding)
        nn.init.xavier_uniform_(self.proj.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(self.proj(images))


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class TokenNoise(nn.Module):
    """StyleGAN's noise inputs (Karras et al. 2019, arXiv 1812.04948, sec. 2 and fig. 1b) on a
    token grid: ``x + strength * n``, one ``n ~ N(0, 1)`` per token shared over channels.
    ``strength`` is learned and starts at zero: one per channel with ``dim``, else one scalar
    (TransGAN's ``noise_strength_1``). ``(B, N, D)`` -> ``(B, N, D)``.

    The noise comes from torch's global generator (``Generator.generate`` seeds it)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(() if dim is None else (dim,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = randn_for_batch(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
        return x + noise * self.strength


class NoiseInjection(TokenNoise):
    """:class:`TokenNoise` with a scalar strength on the attention input, then the wrapped
    attention (TransGAN's blocks). ``(B, N, D)`` -> as wrapped."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.attention(super().forward(x), *args, **kwargs)


class TransGANBlock(nn.Module):
    """One TransGAN block on a ``side x side`` token grid (plus ``extra_tokens`` in front, e.g.
    the discriminator's cls token, which requires global attention).

    * optional cross-attention to a context (the CelebA-HQ generator's latent embedding):
      ``x = x + cross(x, context)`` with no norm, before self-attention (``Celeba256_gen.Block``);
    * a pre-norm :class:`TransformerLayer`: self-attention in ``window x window`` windows
      (``0 < window < side``) or over the whole grid, with a learned relative position bias over
      the window (a global block's window is the grid; TransGAN ``*_rp``), then a GELU FFN;
    * optional :class:`NoiseInjection` on the attention input.

    ``layer_kwargs`` go to :class:`TransformerLayer` (norm_type, eps, activation, conditional
    norms...).
    """

    def __init__(self, dim: int, heads: int, ffn_size: int, side: int, window: int = 0, *,
                 relative_bias: bool = True, noise: bool = False, context_dim: int | None = None,
                 extra_tokens: int = 0, backend: str = "auto", **layer_kwargs) -> None:
        super().__init__()
        self.side, self.extra_tokens = side, extra_tokens
        windowed = 0 < window < side
        tokens = side * side + extra_tokens
        #: attention scores per sample (heads x queries x visible keys): what SDPA's math path
        #: materialises (a learned bias forces it), several times over in the backward pass.
        self.scores_per_sample = heads * tokens * (window * window if windowed else tokens)
        if windowed and extra_tokens:
            raise ValueError("window attention cannot include extra (cls) tokens")
        pattern = Window(side, side, window) if windowed else Full()
        bias_window = window if windowed else side
        self.cross = None
        if context_dim is not None:
            self.cross = MultiHeadAttention(dim, heads, Full(), context_dim=context_dim,
                                            backend=backend)
        self.layer = TransformerLayer(dim, heads, ffn_size, pattern, norm="pre",
                                      backend=backend, **layer_kwargs)
        if noise:
            self.layer.attn = NoiseInjection(self.layer.attn)
        self.rel_bias = None
        if relative_bias:
            if extra_tokens:
                raise ValueError("a relative position bias needs a block without extra tokens")
            self.rel_bias = RelativePositionBias(bias_window, heads)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, extra + side^2, D)``, ``cond`` ``(B, C)`` for conditional norms,
        ``context`` ``(B, Nc, Dc)`` for cross-attention -> ``(B, extra + side^2, D)``."""
        if self.cross is not None:
            if context is None:
                raise ValueError("this block cross-attends: pass context (B, Nc, Dc)")
            x = x + self.cross(x, context=context)
        bias = None if self.rel_bias is None else self.rel_bias()  # (H, w*w, w*w)
        return self.layer(x, bias=bias, cond=cond)


def _enabled_sdpa_backends() -> list[SDPBackend]:
    """The SDPA kernels allowed right now (``sdpa_kernel`` contexts change them)."""
    flags = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
             SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
             SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
             SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled()}
    return [backend for backend, enabled in flags.items() if enabled]


class _SDPAKernels:
    """A re-enterable ``sdpa_kernel(kernels)`` (the recomputation may run more than once)."""

    def __init__(self, kernels: list[SDPBackend]) -> None:
        self.kernels, self.active = kernels, []

    def __enter__(self) -> None:
        self.active.append(sdpa_kernel(self.kernels))
        self.active[-1].__enter__()

    def __exit__(self, *exc) -> None:
        self.active.pop().__exit__(*exc)


#: With checkpointing, a block whose batch would hold more attention scores than this is run
#: (and recomputed) in batch slices, so the backward pass's transient scores stay below it.
CHECKPOINT_SCORE_BUDGET = 1 << 23  # 8M floats: 32 MB per score tensor in fp32


def _slices(batch: int, block: nn.Module) -> list[slice]:
    per_sample = getattr(block, "scores_per_sample", 0)
    step = max(1, CHECKPOINT_SCORE_BUDGET // per_sample) if per_sample else batch
    return [slice(start, start + step) for start in range(0, batch, step)]


def _part(t: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    return None if t is None else t[part]


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, *, checkpointed: bool = False,
               cond: torch.Tensor | None = None,
               context: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``blocks`` in order: ``x`` ``(B, N, D)`` -> ``(B, N, D)``.

    With ``checkpointed`` (and grad enabled) each block keeps only its input and recomputes its
    activations in the backward pass (``torch.utils.checkpoint``, non-reentrant). A block whose
    attention scores for the batch exceed :data:`CHECKPOINT_SCORE_BUDGET` is checkpointed in
    batch slices (exact: nothing in a block couples samples), so its recomputation never holds
    the whole batch's scores. The recomputation replays the RNG state (noise injection draws the
    same noise) and the SDPA kernel choice of the forward pass (a gradient penalty runs D on
    SDPA's math path, which the backward must recompute identically).
    """
    if not (checkpointed and torch.is_grad_enabled()):
        for block in blocks:
            x = block(x, cond, context)
        return x
    replay = _SDPAKernels(_enabled_sdpa_backends())

    def contexts():
        return contextlib.nullcontext(), replay

    for block in blocks:
        parts = [checkpoint(block, x[part], _part(cond, part), _part(context, part),
                            use_reentrant=False, context_fn=contexts)
                 for part in _slices(x.shape[0], block)]
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
    return x
