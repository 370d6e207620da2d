"""TransGAN (Jiang, Chang, Wang, NeurIPS 2021, arXiv 2102.07074): a generator and a multi-scale
discriminator built only from transformer blocks.

Generator: ``Linear(z)`` -> ``bottom x bottom`` token grid (+ a learned position embedding) ->
stages of pre-norm blocks, the grid doubled between stages by PixelShuffle (width / 4) or bicubic
upsampling (same width), each stage adding its own position embedding -> a per-pixel
``Linear(D, 3)`` to RGB, no tanh. Blocks attend globally on small grids and in windows on large
ones, with a relative position bias per block; optional noise injection, cross-attention to a
latent embedding (CelebA-HQ 256) and class conditioning through AdaNorm-T.

Discriminator: DiffAugment (inside ``forward``) -> patch embeddings at 2-3 scales; each scale
after the first average-pools the previous tokens 2x2 and concatenates its own patches along
channels -> blocks per scale -> a cls token, one global block, a norm, a linear head on the cls
token (plus a class projection when conditional).

Layer structure and initialisation follow VITA-Group/TransGAN at 6b85440,
``models_search/ViT_custom_rp.py``, ``ViT_custom_scale2_rp_noise.py``, ``Celeba256_gen.py``,
``Celeba256_dis.py``, ``ViT_custom_local544444_256_rp_noise.py``, ``ViT_scale3_local_new_rp.py``.

Shapes: B batch, N = side^2 tokens in raster order, D width, L latent width, C cond width.
"""

from __future__ import annotations

import torch
from torch import nn

from imgtx.errors import UserError
from imgtx.gan.base import Discriminator, Generator, images_to_uint8
from imgtx.gan.blocks import (
    PatchEmbed,
    TransGANBlock,
    avg_pool_tokens,
    run_blocks,
    trunc_normal_param,
    upsample_tokens,
)
from imgtx.gan.conditioning import (
    ClassCondition,
    ProjectionHead,
    adanorm_layer_kwargs,
    check_labels,
)
from imgtx.gan.transgan_configs import TransGANDiscriminatorConfig, TransGANGeneratorConfig
from imgtx.transformer import PixelNorm

__all__ = ["TransGANGenerator", "TransGANDiscriminator", "layer_kwargs", "images_to_uint8"]

LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, as in the official code


def layer_kwargs(norm: str, cond_dim: int | None = None, adanorm: str = "trunk") -> dict:
    """TransformerLayer options of a TransGAN block: GELU FFN, no qkv bias, ``ln`` LayerNorm or
    ``pn`` PixelNorm, plus AdaNorm-T (``imgtx.gan.conditioning``) when ``cond_dim`` is set."""
    norm_type = {"ln": "layer", "pn": "pixel"}[norm]
    kwargs = {"norm_type": norm_type, "eps": LAYER_NORM_EPS, "activation": "gelu"}
    if cond_dim is not None:
        kwargs.update(adanorm_layer_kwargs(adanorm, cond_dim))
        if kwargs["norm_type"] == "layer":  # the branch norms stay unconditional: keep ours
            kwargs["norm_type"] = norm_type
    return kwargs


class TransGANGenerator(Generator):
    """TransGAN generator: ``forward(z (B, L), labels (B,) | None) -> (B, 3, H, W)`` in about
    [-1, 1] (no tanh). :meth:`generate` returns uint8 images. ``backend``: the attention
    backend, a run-time choice (``model.set_backend(name)`` changes it later)."""

    model_card_tags = ("gan", "transgan", "generator")
    model_card_description = ("TransGAN generator (Jiang et al. 2021, arXiv 2102.07074): "
                              "transformer blocks from a latent token grid up to the image.")

    def __init__(self, config: TransGANGeneratorConfig, backend: str = "auto") -> None:
        super().__init__(config)
        c = config
        grids, dims = c.grids, c.dims
        self.condition, cond_dim = None, None
        if c.num_classes:
            self.condition = ClassCondition(c.num_classes, c.class_embed_dim, c.latent_dim,
                                            c.cond_hidden)
            cond_dim = self.condition.cond_dim
        self.to_tokens = nn.Linear(c.latent_dim, grids[0] ** 2 * c.dim)
        self.pos_embeds = nn.ParameterList(trunc_normal_param(1, side * side, width)
                                           for side, width in zip(grids, dims))
        self.latent_embed = self.latent_pos = None
        context_dim = None
        if c.latent_attention:  # Celeba256_gen: embedding_transform and embed_pos (zero init)
            self.latent_embed = nn.Linear(c.latent_dim, grids[0] ** 2 * c.dim)
            self.latent_pos = nn.Parameter(torch.zeros(1, grids[0] ** 2, c.dim))
            context_dim = c.dim
        kwargs = layer_kwargs(c.norm, cond_dim, c.adanorm)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                TransGANBlock(width, c.heads, int(width * c.mlp_ratio), side, window,
                              relative_bias=c.relative_bias, noise=c.noise,
                              context_dim=context_dim, backend=backend, **kwargs)
                for _ in range(depth))
            for side, width, depth, window in zip(grids, dims, c.depths, c.windows))
        self.to_rgb = nn.Linear(dims[-1], 3)  # the official 1x1 Conv2d "deconv"
        nn.init.xavier_uniform_(self.to_rgb.weight)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` ``(B, L)``, ``labels`` ``(B,)`` (conditional only) -> ``(B, 3, H, W)``."""
        c = self.config
        b = z.shape[0]
        if z.dim() != 2 or z.shape[1] != c.latent_dim:
            raise UserError(f"this generator takes latents of shape (B, {c.latent_dim}), got "
                            f"{tuple(z.shape)}")
        cond = None
        if self.condition is not None:
            cond = self.condition(z, labels)  # (B, C)
        else:
            check_labels(labels, 0, b, "generator")
        x = self.to_tokens(z).view(b, -1, c.dim) + self.pos_embeds[0]  # (B, N0, D0)
        context = None
        if self.latent_embed is not None:
            context = self.latent_embed(z).view(b, -1, c.dim) + self.latent_pos  # (B, N0, D0)
        for i, blocks in enumerate(self.stages):
            if i:
                x = upsample_tokens(x, c.grids[i - 1], c.upsample[i - 1])  # (B, side^2, D_i)
                x = x + self.pos_embeds[i]
            x = run_blocks(blocks, x, checkpointed=c.checkpoint_blocks, cond=cond,
                           context=context)
        rgb = self.to_rgb(x)  # (B, H*W, 3)
        return rgb.transpose(1, 2).reshape(b, 3, c.image_size, c.image_size)


class TransGANDiscriminator(Discriminator):
    """TransGAN multi-scale discriminator: ``forward(images (B, 3, H, W) in [-1, 1], labels
    (B,) | None) -> (B,)`` critic values, DiffAugment inside (:class:`imgtx.gan.base.
    Discriminator`)."""

    model_card_tags = ("gan", "transgan", "discriminator")
    model_card_description = ("TransGAN multi-scale discriminator (Jiang et al. 2021, arXiv "
                              "2102.07074).")

    def __init__(self, config: TransGANDiscriminatorConfig, backend: str = "auto") -> None:
        super().__init__(config)
        c = config
        p = c.patch_size
        embeds = []
        for s, channels in enumerate(c.embed_dims):
            if s == 0 and c.overlap_first:  # Celeba256_dis fRGB_1
                embeds.append(PatchEmbed(channels, 2 * p, p, p // 2))
            else:
                embeds.append(PatchEmbed(channels, p * 2**s, p * 2**s))
        self.patch_embeds = nn.ModuleList(embeds)
        self.pos_embeds = nn.ParameterList(trunc_normal_param(1, side * side, width)
                                           for side, width in zip(c.grids, c.widths))
        kwargs = dict(layer_kwargs(c.norm), noise=c.noise, backend=backend)
        self.scales = nn.ModuleList(
            nn.ModuleList(
                TransGANBlock(width, c.heads, int(width * c.mlp_ratio), side, window,
                              relative_bias=c.relative_bias, **kwargs)
                for depth, window in zip(depths, windows) for _ in range(depth))
            for side, width, depths, windows in zip(c.grids, c.widths, c.depths, c.windows))
        self.cls_token = trunc_normal_param(1, 1, c.dim)
        self.last_block = TransGANBlock(c.dim, c.heads, int(c.dim * c.mlp_ratio), c.grids[-1],
                                        relative_bias=False, extra_tokens=1, **kwargs)
        self.norm = nn.LayerNorm(c.dim, eps=LAYER_NORM_EPS) if c.norm == "ln" else PixelNorm()
        self.head = ProjectionHead(c.dim, c.num_classes, c.aux_classifier)
        for module in self.modules():  # Discriminator._init_weights
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images ``(B, 3, H, W)`` -> the normed cls token ``(B, D)`` (the head's input):
        patch embeddings per scale, each scale's blocks, then the cls token's global block."""
        c = self.config
        b = images.shape[0]
        x = None
        for s, (embed, blocks) in enumerate(zip(self.patch_embeds, self.scales)):
            patches = embed(images)  # (B, grid_s^2, embed_dims[s])
            if s:
                pooled = avg_pool_tokens(x, c.grids[s - 1])  # (B, grid_s^2, width_{s-1})
                patches = torch.cat([pooled, patches], dim=-1)  # (B, grid_s^2, width_s)
            x = patches + self.pos_embeds[s]
            x = run_blocks(blocks, x, checkpointed=c.checkpoint_blocks)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = run_blocks(nn.ModuleList([self.last_block]), x, checkpointed=c.checkpoint_blocks)
        return self.norm(x[:, 0])  # (B, D)
