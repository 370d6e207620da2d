"""STrans-G and STrans-D (Xu et al. 2021, "The Nuts and Bolts of Adopting Transformer in GANs",
arXiv 2110.13107): a transformer GAN whose generator attends globally at low resolution and in
Swin windows at high resolution, and whose discriminator is a stack of Swin stages.

Generator: ``Linear(z)`` -> 4x4 token grid (+ learned positions) -> stages of blocks with x2
upsampling between them -> per-pixel ``Linear`` to RGB (no tanh). Stages whose grid is smaller
than ``swin_from`` use global attention; the others use Swin blocks, regular and shifted windows
alternating. Every block has its own relative position bias (Swin; a "global" block is a single
window covering the grid, so it gets one too). Upsampling (our choice, the paper is silent):
``bilinear`` is StyleSwin's ``BilinearUpsample`` (x2 bilinear, LayerNorm, a Linear to the next
width, plus a gated sinusoidal position encoding); ``pixelshuffle`` is TransGAN's.

Discriminator: conv stem -> stages of [Swin blocks -> x2 downsample] -> LayerNorm, mean over
tokens -> critic head (projection head when class-conditional). Its blocks may replace the
identity shortcuts by learned skip projections and apply a LeakyReLU after each sub-layer (the
paper's fix for residual-dominated transformer discriminators).

Shapes: B batch, N = side^2 tokens in raster order, D width, C conditioning width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgtx.attention import RelativePositionBias, Window, shifted_window
from imgtx.gan.base import Discriminator, Generator
from imgtx.gan.blocks import TokenNoise, map_to_tokens, run_blocks, tokens_to_map
from imgtx.gan.conditioning import (
    ClassCondition,
    ProjectionHead,
    adanorm_layer_kwargs,
    check_labels,
)
from imgtx.gan.strans_configs import STransDiscriminatorConfig, STransGeneratorConfig
from imgtx.transformer import TransformerLayer, sinusoid_positions_2d

__all__ = ["SwinBlock", "Upsample", "Downsample", "STransGenerator", "STransDiscriminator"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class SwinBlock(nn.Module):
    """A pre-norm transformer layer on a ``grid x grid`` token grid, attending in
    ``window x window`` windows (shifted by half a window if ``shift``) with a relative position
    bias. A window as large as the grid is global attention; it is never shifted.

    ``layer_kwargs`` go to :class:`imgtx.transformer.TransformerLayer` (norms, residual, ...).
    """

    def __init__(self, dim: int, heads: int, grid: int, window: int, shift: bool, ffn_size: int,
                 **layer_kwargs) -> None:
        super().__init__()
        window = min(window, grid)
        self.shifted = shift and window < grid
        pattern = shifted_window(grid, grid, window) if self.shifted else \
            Window(grid, grid, window)
        self.layer = TransformerLayer(dim, heads, ffn_size, pattern, norm="pre", **layer_kwargs)
        self.position_bias = RelativePositionBias(window, heads)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                context: None = None) -> torch.Tensor:
        """``x`` ``(B, N, D)``, ``cond`` ``(B, C)`` or None -> ``(B, N, D)``. (``context`` is
        accepted for :func:`imgtx.gan.blocks.run_blocks` and must be None.)"""
        if context is not None:
            raise ValueError("a SwinBlock has no cross-attention: context must be None")
        return self.layer(x, bias=self.position_bias(), cond=cond)


def swin_stage(dim: int, heads: int, grid: int, window: int, depth: int, ffn_size: int,
               **layer_kwargs) -> nn.ModuleList:
    """``depth`` Swin blocks, regular windows first, then shifted, alternating."""
    return nn.ModuleList(SwinBlock(dim, heads, grid, window, bool(i % 2), ffn_size, **layer_kwargs)
                         for i in range(depth))


class Upsample(nn.Module):
    """x2 token-grid upsampling from width ``in_dim`` on a ``side`` grid to ``out_dim``.

    ``bilinear`` (StyleSwin ``BilinearUpsample``): bilinear x2, LayerNorm, ``Linear(in, out)``
    without bias; ``norm_bilinear``: the same LayerNorm and Linear applied per token first, then
    bilinear x2 (same parameters; the interpolated tokens are not renormalised one by one, so a
    ramp between two tokens stays a ramp); ``pixelshuffle`` (TransGAN, widened first):
    ``Linear(in, 4 out)`` then ``PixelShuffle(2)``. All then add a fixed 2D sinusoidal position
    encoding scaled by a learned gate that starts at zero (StyleSwin's ``alpha * sin_pos_embed``).
    """

    def __init__(self, in_dim: int, out_dim: int, side: int, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode, self.side = mode, side
        if mode in ("bilinear", "norm_bilinear"):
            self.norm = nn.LayerNorm(in_dim)
            self.proj = nn.Linear(in_dim, out_dim, bias=False)
        else:
            self.proj = nn.Linear(in_dim, 4 * out_dim)
        self.position_gate = nn.Parameter(torch.zeros(()))
        self.register_buffer("sinusoid", sinusoid_positions_2d(2 * side, 2 * side, out_dim)[None],
                             persistent=False)  # (1, 4 side^2, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, side^2, in)`` -> ``(B, (2 side)^2, out)``."""
        if self.mode == "bilinear":
            grid = F.interpolate(tokens_to_map(x, self.side), scale_factor=2, mode="bilinear",
                                 align_corners=False)  # (B, in, 2side, 2side)
            x = self.proj(self.norm(map_to_tokens(grid)))
        elif self.mode == "norm_bilinear":
            grid = tokens_to_map(self.proj(self.norm(x)), self.side)  # (B, out, side, side)
            x = map_to_tokens(F.interpolate(grid, scale_factor=2, mode="bilinear",
                                            align_corners=False))
        else:
            grid = F.pixel_shuffle(tokens_to_map(self.proj(x), self.side), 2)  # (B, out, 2s, 2s)
            x = map_to_tokens(grid)
        return x + self.position_gate * self.sinusoid


class Downsample(nn.Module):
    """x2 token-grid downsampling from width ``in_dim`` to ``out_dim``.

    ``merge``: Swin ``PatchMerging`` (each 2x2 neighbourhood's 4 tokens concatenated, LayerNorm,
    ``Linear(4 in, out)``); ``avgpool``: 2x2 average, then ``Linear(in, out)``.
    """

    def __init__(self, in_dim: int, out_dim: int, mode: str = "merge") -> None:
        super().__init__()
        self.mode = mode
        if mode == "merge":
            self.norm = nn.LayerNorm(4 * in_dim)
            self.proj = nn.Linear(4 * in_dim, out_dim, bias=False)
        else:
            self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """``(B, side^2, in)`` -> ``(B, (side/2)^2, out)``."""
        grid = tokens_to_map(x, side)
        if self.mode == "merge":
            merged = map_to_tokens(F.pixel_unshuffle(grid, 2))  # (B, (side/2)^2, 4 in)
            return self.proj(self.norm(merged))
        return self.proj(map_to_tokens(F.avg_pool2d(grid, 2)))


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


class STransGenerator(Generator):
    """STrans-G: ``forward(z (B, latent_dim), labels (B,) | None) -> images (B, 3, H, W)``,
    unbounded (no tanh; images are in [-1, 1] where trained). See the module docstring."""

    model_card_tags = ("gan", "strans-g", "swin", "generator")
    model_card_description = ("STrans-G generator (Xu et al. 2021, arXiv 2110.13107): global "
                              "attention at low resolution, Swin blocks at high resolution.")

    def __init__(self, config: STransGeneratorConfig, backend: str = "auto") -> None:
        super().__init__(config)
        c = config
        self.condition = ClassCondition(c.num_classes, c.class_embed_dim, c.latent_dim,
                                        c.cond_hidden) if c.num_classes else None
        layer_kwargs = adanorm_layer_kwargs(
            c.adanorm, self.condition.cond_dim if self.condition is not None else None)
        # The input MLP reads z, or with ``label_input`` the conditioning vector (class embedding
        # and z), so that the label shapes the image from the first step, not only through the
        # norms' scales and shifts (which start at zero).
        self.reads_cond = c.label_input and self.condition is not None
        width_in = self.condition.cond_dim if self.reads_cond else c.latent_dim
        self.to_tokens = nn.Linear(width_in, c.bottom**2 * c.dims[0])
        self.position = nn.Parameter(torch.zeros(1, c.bottom**2, c.dims[0]))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.stages = nn.ModuleList()
        for grid, dim, depth, heads in zip(c.grids, c.dims, c.depths, c.heads):
            window = c.window if grid >= c.swin_from else grid  # global below swin_from
            self.stages.append(swin_stage(dim, heads, grid, window, depth, int(dim * c.mlp_ratio),
                                          activation="gelu", backend=backend, **layer_kwargs))
        self.upsamples = nn.ModuleList(Upsample(c.dims[i], c.dims[i + 1], c.grids[i], c.upsample)
                                       for i in range(len(c.dims) - 1))
        # Noise inputs at every stage's input (after its upsampling): per-pixel texture needs a
        # source of randomness below the latent's 4x4 grid.
        self.noise = nn.ModuleList(TokenNoise(dim) for dim in c.dims) if c.noise else None
        self.to_rgb = nn.Linear(c.dims[-1], 3)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` ``(B, latent_dim)``, ``labels`` ``(B,)`` class ids (conditional only) ->
        ``(B, 3, image_size, image_size)``."""
        c = self.config
        b = z.shape[0]
        if self.condition is not None:
            cond = self.condition(z, labels)  # (B, C)
        else:
            cond = check_labels(labels, 0, b, "generator")  # None
        tokens_in = cond if self.reads_cond else z  # (B, C) or (B, L)
        x = self.to_tokens(tokens_in).view(b, c.bottom**2, c.dims[0]) + self.position
        for i, blocks in enumerate(self.stages):
            if i:
                x = self.upsamples[i - 1](x)  # (B, 4N, D_i)
            if self.noise is not None:
                x = self.noise[i](x)
            x = run_blocks(blocks, x, checkpointed=c.checkpoint_blocks, cond=cond)
        rgb = self.to_rgb(x)  # (B, H*W, 3)
        return rgb.transpose(1, 2).reshape(b, 3, c.image_size, c.image_size)


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------


class STransDiscriminator(Discriminator):
    """STrans-D: ``forward(images (B, 3, H, W) in [-1, 1], labels (B,) | None) -> (B,)``
    critic values, DiffAugment inside (:class:`imgtx.gan.base.Discriminator`)."""

    model_card_tags = ("gan", "strans-d", "swin", "discriminator")
    model_card_description = ("STrans-D discriminator (Xu et al. 2021, arXiv 2110.13107): conv "
                              "stem, Swin stages with skip projections, critic head.")

    def __init__(self, config: STransDiscriminatorConfig, backend: str = "auto") -> None:
        super().__init__(config)
        c = config
        if c.stem_stride == 1:
            conv = nn.Conv2d(3, c.dims[0], kernel_size=3, padding=1)
        else:
            conv = nn.Conv2d(3, c.dims[0], kernel_size=4, stride=2, padding=1)
        self.stem = nn.Sequential(conv, nn.LeakyReLU(0.2))
        layer_kwargs = dict(
            activation="gelu", residual=c.residual, backend=backend,
            branch_activation=None if c.branch_activation == "none" else c.branch_activation)
        self.stages = nn.ModuleList(
            swin_stage(dim, heads, grid, c.window, depth, int(dim * c.mlp_ratio), **layer_kwargs)
            for grid, dim, depth, heads in zip(c.grids, c.dims, c.depths, c.heads))
        self.downsamples = nn.ModuleList(Downsample(c.dims[i], c.dims[i + 1], c.downsample)
                                         for i in range(len(c.depths)))
        self.norm = nn.LayerNorm(c.dims[-1])
        self.head = ProjectionHead(c.dims[-1], c.num_classes, c.aux_classifier)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images ``(B, 3, H, W)`` -> ``(B, D_last)``, the head's input: the stem, each
        stage's Swin blocks and downsampling, then a LayerNorm and the mean over tokens."""
        c = self.config
        x = map_to_tokens(self.stem(images))  # (B, N0, D0)
        for blocks, down, grid in zip(self.stages, self.downsamples, c.grids):
            x = run_blocks(blocks, x, checkpointed=c.checkpoint_blocks)
            x = down(x, grid)  # (B, N/4, D_next)
        return self.norm(x).mean(dim=1)  # (B, D_last)
