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

from imgtx.attention import set_backend
from imgtx.errors import UserError
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
from imgtx.gan.diffaugment import AugmentedInput
from imgtx.gan.transgan_configs import TransGANDiscriminatorConfig, TransGANGeneratorConfig
from imgtx.hub import HubModel
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


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats -> ``[0, 255]`` uint8 (clamped, rounded), on the CPU."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def _labels_for(num: int, labels, num_classes: int) -> torch.Tensor | None:
    """``generate``'s labels: None (cycle 0..K-1 when conditional), an int, or ``num`` ids."""
    if num_classes and labels is None:
        return torch.arange(num) % num_classes
    if isinstance(labels, int):
        labels = torch.full((num,), labels, dtype=torch.long)
    if labels is None:
        return None
    return check_labels(torch.as_tensor(labels), num_classes, num, "generator")


class TransGANGenerator(HubModel):
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

    def set_backend(self, backend: str) -> TransGANGenerator:
        """Compute every attention layer with ``backend`` from now on; returns the model."""
        set_backend(self, backend)
        return self

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

    @torch.no_grad()
    def generate(self, num: int, labels: torch.Tensor | int | list[int] | None = None,
                 seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """``num`` images as ``(N, 3, H, W)`` uint8 on the CPU, deterministic for a ``seed``.

        Latents come from ``torch.Generator().manual_seed(seed)`` on the CPU, and the injected
        noise (if any) from the global generator seeded with ``seed`` inside a forked RNG state;
        the model runs in eval mode (restored afterwards) under no_grad, ``batch_size`` latents
        at a time.
        ``labels``: one class id for all, ``num`` ids, or None (a conditional model then cycles
        through the classes 0, 1, ...).
        """
        c = self.config
        device = next(self.parameters()).device
        z = torch.randn(num, c.latent_dim, generator=torch.Generator().manual_seed(seed))
        labels = _labels_for(num, labels, c.num_classes)
        was_training = self.training
        self.eval()
        # Noise injection draws from the global generator: seed it too, without disturbing the
        # caller's random state.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            try:
                chunks = []
                for start in range(0, num, batch_size):
                    part = None if labels is None else labels[start:start + batch_size].to(device)
                    chunks.append(images_to_uint8(self(z[start:start + batch_size].to(device),
                                                       part)))
            finally:
                self.train(was_training)
        if not chunks:
            return torch.zeros(0, 3, c.image_size, c.image_size, dtype=torch.uint8)
        return torch.cat(chunks)


class TransGANDiscriminator(AugmentedInput, HubModel):
    """TransGAN multi-scale discriminator: ``forward(images (B, 3, H, W) in [-1, 1], labels
    (B,) | None) -> (B,)`` critic values.

    DiffAugment (``config.diffaug``) runs inside ``forward`` - in training mode by default, or
    as ``augment=True/False`` says - so real images, fakes and gradient-penalty interpolates are
    augmented alike.
    """

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

    def set_backend(self, backend: str) -> TransGANDiscriminator:
        """Compute every attention layer with ``backend`` from now on; returns the model."""
        set_backend(self, backend)
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                augment: bool | None = None, return_class_logits: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``(B, 3, H, W)``, ``labels`` ``(B,)`` (conditional only) -> ``(B,)``.

        ``augment``: apply DiffAugment (default: in training mode only).
        ``return_class_logits``: also return the auxiliary classifier's ``(B, classes)`` logits.
        """
        c = self.config
        images = self.checked_input(images, augment)  # (B, 3, H, W), augmented when training
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
        return self.head(self.norm(x[:, 0]), labels, return_class_logits)  # (B,)
