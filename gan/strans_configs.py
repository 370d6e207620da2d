"""STrans-G / STrans-D configurations: the two config dataclasses and the named registry.

Source: Xu, Xu, Chen, Zhou, Loy, "The Nuts and Bolts of Adopting Transformer in GANs"
(arXiv 2110.13107). No official code exists. What the paper (abstract, project page figures)
fixes: an MLP from z to a 4x4 token grid; global-attention blocks at low resolution; Swin blocks
(regular and shifted windows alternating, relative position bias) at high resolution; a to-RGB
output; a discriminator of a convolutional stem and stages of [Swin blocks -> downsample] with a
critic head; skip projections and LeakyReLU in the discriminator's blocks; AdaNorm-T. Depths,
widths, windows and head counts are *our* choices; where the paper's plot labels suggest a value
(1/2/2/3 blocks at 4^2/8^2/16^2/32^2 for the conditional 32^2 G; 2 blocks per D stage) we take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from imgtx.errors import UserError
from imgtx.gan.diffaugment import check_policy
from imgtx.registry import RegistryEntry, lookup

__all__ = ["STransGeneratorConfig", "STransDiscriminatorConfig", "STransEntry", "STRANS_CONFIGS",
           "get_strans_config"]


@dataclass
class STransGeneratorConfig:
    """Hyperparameters of :class:`imgtx.gan.strans.STransGenerator` (saved as config.json).

    Stage ``i`` works on a ``bottom * 2**i`` square token grid at width ``dims[i]`` with
    ``depths[i]`` blocks; the last stage's grid is the image. The attention backend is a
    run-time choice (``STransGenerator(config, backend=...)``), not a config field.

    A Swin stage (grid at least ``swin_from``, larger than ``window``) needs two blocks or more:
    blocks alternate regular and shifted windows, and a stage of one block never lets its
    windows exchange information. At the image's own resolution each window then comes out
    as a patch, an ``window``-pixel grid over every sample (docs/gan.md, the photo race).
    """

    #: Keys older config.json files hold that no longer change the model; loaders drop them.
    IGNORED_CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("backend",)

    image_size: int = 32  # output side in pixels (= last stage's grid side)
    latent_dim: int = 128  # z ~ N(0, I) width
    bottom: int = 4  # side of the first token grid (paper figure: 4x4)
    dims: tuple[int, ...] = (256, 256, 128, 64)  # width per stage
    depths: tuple[int, ...] = (1, 2, 2, 3)  # blocks per stage
    heads: tuple[int, ...] = (4, 4, 2, 1)  # attention heads per stage
    window: int = 8  # Swin window side at high-resolution stages
    swin_from: int = 16  # grids at least this side use Swin blocks; smaller ones global attention
    mlp_ratio: float = 4.0  # FFN hidden width / model width
    upsample: str = "bilinear"  # "bilinear": x2 bilinear + Linear (StyleSwin BilinearUpsample)
    #                             "norm_bilinear": LayerNorm + Linear per token, then x2 bilinear
    #                             "pixelshuffle": Linear to 4x width + PixelShuffle(2) (TransGAN)
    num_classes: int = 0  # > 0: class-conditional through AdaNorm-T
    class_embed_dim: int = 128  # class-embedding width (conditional only)
    cond_hidden: int = 0  # 0: c = concat(embed(y), z); > 0: an MLP of it to this width
    adanorm: str = "trunk"  # AdaNorm-T placement: "branch" (a) | "trunk" (b) | "both" (c)
    label_input: bool = False  # conditional: the input MLP reads c (class embedding and z), not z
    checkpoint_blocks: bool = False  # activation checkpointing per block (training memory)
    noise: bool = False  # StyleGAN noise inputs: per-token N(0, 1) x learned per-channel scale

    def __post_init__(self) -> None:
        self.dims, self.depths, self.heads = tuple(self.dims), tuple(self.depths), tuple(self.heads)
        stages = len(self.dims)
        if not stages or len(self.depths) != stages or len(self.heads) != stages:
            raise UserError(f"dims, depths and heads need one entry per stage, got "
                            f"{self.dims}, {self.depths}, {self.heads}")
        if self.bottom * 2 ** (stages - 1) != self.image_size:
            raise UserError(f"{stages} stages from a {self.bottom}x{self.bottom} grid give "
                            f"{self.bottom * 2 ** (stages - 1)}px images, not image_size="
                            f"{self.image_size}; add or remove stages")
        for side in self.grids:
            if side >= self.swin_from and side % self.window:
                raise UserError(f"Swin window {self.window} does not divide the {side}x{side} "
                                "grid; pick a window that divides every Swin stage's grid")
        if self.upsample not in ("bilinear", "norm_bilinear", "pixelshuffle"):
            raise UserError(f"upsample={self.upsample!r}; expected 'bilinear', 'norm_bilinear' "
                            "or 'pixelshuffle'")
        if self.adanorm not in ("branch", "trunk", "both"):
            raise UserError(f"adanorm={self.adanorm!r}; expected 'branch', 'trunk' or 'both'")

    @property
    def grids(self) -> tuple[int, ...]:
        """Token-grid side of every stage."""
        return tuple(self.bottom * 2**i for i in range(len(self.dims)))


@dataclass
class STransDiscriminatorConfig:
    """Hyperparameters of :class:`imgtx.gan.strans.STransDiscriminator` (saved as config.json).

    A convolutional stem maps the image to a ``image_size / stem_stride`` grid at width
    ``dims[0]``; stage ``i`` runs ``depths[i]`` Swin blocks at width ``dims[i]``, then downsamples
    x2 to width ``dims[i+1]``; the critic head reads the last grid at width ``dims[-1]``. The
    attention backend is a run-time choice (``STransDiscriminator(config, backend=...)``).
    """

    #: Keys older config.json files hold that no longer change the model; loaders drop them.
    IGNORED_CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("backend",)

    image_size: int = 32  # input side in pixels
    num_classes: int = 0  # > 0: projection discriminator (Miyato & Koyama 2018)
    aux_classifier: bool = False  # also an auxiliary classifier head (AC-GAN, Odena et al. 2017)
    stem_stride: int = 1  # 1: one token per pixel; 2: a 4x4/stride-2 conv halves the grid
    dims: tuple[int, ...] = (64, 128, 256, 256)  # len(depths) + 1 widths (last: head width)
    depths: tuple[int, ...] = (2, 2, 2)  # Swin blocks per stage
    heads: tuple[int, ...] = (2, 4, 8)  # attention heads per stage
    window: int = 8  # Swin window side (a grid no larger than it attends globally)
    mlp_ratio: float = 2.0  # FFN hidden width / model width
    downsample: str = "merge"  # "merge": Swin PatchMerging | "avgpool": 2x2 average + Linear
    residual: str = "projection"  # "projection": learned skip projection | "identity" shortcut
    branch_activation: str = "leaky_relu"  # after each sub-layer: "leaky_relu" | "none"
    diffaug: str = "translation,cutout,color"  # DiffAugment policy applied inside forward
    checkpoint_blocks: bool = False  # activation checkpointing per block

    def __post_init__(self) -> None:
        self.dims, self.depths, self.heads = tuple(self.dims), tuple(self.depths), tuple(self.heads)
        if not self.depths or len(self.heads) != len(self.depths) or \
                len(self.dims) != len(self.depths) + 1:
            raise UserError(f"need len(dims) = len(depths) + 1 = len(heads) + 1, got dims "
                            f"{self.dims}, depths {self.depths}, heads {self.heads}")
        side = self.image_size // self.stem_stride
        if self.stem_stride not in (1, 2) or side * self.stem_stride != self.image_size or \
                side % 2 ** len(self.depths):
            raise UserError(f"image_size {self.image_size} with stem_stride {self.stem_stride} "
                            f"cannot be halved {len(self.depths)} times; stem_stride must be 1 or "
                            "2 and the grid divisible by 2**stages")
        for grid in self.grids:
            if grid > self.window and grid % self.window:
                raise UserError(f"Swin window {self.window} does not divide the {grid}x{grid} "
                                "grid")
        check_policy(self.diffaug)
        choices = {"downsample": ("merge", "avgpool"), "residual": ("projection", "identity"),
                   "branch_activation": ("leaky_relu", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")

    @property
    def grids(self) -> tuple[int, ...]:
        """Token-grid side of every stage (before its downsampling)."""
        side = self.image_size // self.stem_stride
        return tuple(side // 2**i for i in range(len(self.depths)))


@dataclass
class STransEntry(RegistryEntry):
    """A named STrans pair: ``config`` is the generator's, ``discriminator`` the critic's."""

    discriminator: STransDiscriminatorConfig = field(default_factory=STransDiscriminatorConfig)


def _g(**kw) -> STransGeneratorConfig:
    return STransGeneratorConfig(**kw)


def _d(**kw) -> STransDiscriminatorConfig:
    return STransDiscriminatorConfig(**kw)


_PAPER = "Xu et al. 2021, arXiv 2110.13107"
_CIFAR_G = dict(image_size=32, latent_dim=256, bottom=4, dims=(512, 512, 256, 128),
                depths=(1, 2, 2, 3), heads=(8, 8, 4, 2), window=8, swin_from=16)
_CIFAR_D = dict(image_size=32, stem_stride=1, dims=(128, 256, 512, 512), depths=(2, 2, 2),
                heads=(2, 4, 8), window=8)

STRANS_CONFIGS: dict[str, STransEntry] = {
    # Unconditional CIFAR-10 (paper: CIFAR-10 results are for the conditional model only).
    # Depths from the conditional 32^2 G plot labels; widths/heads/window ours (head dim 64).
    "strans-cifar10": STransEntry(
        _g(**_CIFAR_G), f"{_PAPER}; depths from the 32^2 G plot labels, widths ours",
        discriminator=_d(**_CIFAR_D),
        train={"batch_size": 64, "loss": "wgan-gp", "n_critic": 4}),
    # Conditional CIFAR-10: project page reports FID 2.77 / IS 11.62. AdaNorm-T on the trunk (b).
    "strans-cifar10-cond": STransEntry(
        _g(**_CIFAR_G, num_classes=10, class_embed_dim=128, adanorm="trunk"),
        f"{_PAPER} (cond. CIFAR-10 FID 2.77, IS 11.62); placement (b), widths ours",
        discriminator=_d(**_CIFAR_D, num_classes=10),
        train={"batch_size": 64, "loss": "hinge", "n_critic": 1}),
    # CelebA 64^2: project page FID 2.03. D stages at 64/32/16/8 with 2 blocks (plot labels).
    "strans-celeba64": STransEntry(
        _g(image_size=64, latent_dim=256, bottom=4, dims=(512, 512, 256, 128, 64),
           depths=(1, 2, 2, 2, 2), heads=(8, 8, 4, 2, 1), window=8, swin_from=16),
        f"{_PAPER} (CelebA 64 FID 2.03); D stages from plot labels, widths ours",
        discriminator=_d(image_size=64, stem_stride=1, dims=(64, 128, 256, 512, 512),
                         depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=8),
        train={"batch_size": 64, "loss": "wgan-gp", "n_critic": 4}),
    # Test-sized: 3 stages (4^2 global, 8^2 and 16^2 Swin with window 4).
    "strans-tiny": STransEntry(
        _g(image_size=16, latent_dim=16, bottom=4, dims=(32, 32, 16), depths=(1, 1, 1),
           heads=(2, 2, 1), window=4, swin_from=8, class_embed_dim=8),
        "imgtx: test-sized",
        discriminator=_d(image_size=16, stem_stride=1, dims=(16, 32, 32), depths=(1, 1),
                         heads=(1, 2), window=4, mlp_ratio=2.0, diffaug=""),
        train={"batch_size": 8, "loss": "wgan-gp", "n_critic": 1}),
    # CPU-sized conditional pair for builtin:digits at 32^2 (scripts/train_strans_digits.py,
    # about an hour on one shared CPU core): the paper's conditional 32^2 G plot labels give
    # 1/2/2/3 blocks at 4^2/8^2/16^2/32^2; we keep 1/2/2 and use 1 block at 32^2, the stage that
    # costs most wall time on a CPU (1,024 tokens; G forward+backward about halves). FFN ratio 2;
    # D sees a 16^2 grid after a stride-2 stem. D: identity residuals (they won the skip-projection
    # ablation at this scale, docs/strans.md) and an auxiliary classifier beside the projection
    # head (AC-GAN; the projection alone taught the classes too slowly). DiffAugment translation
    # only: cutout hides half a digit, colour slows D's class learning and tints the grey digits.
    "strans-digits32-cond": STransEntry(
        _g(image_size=32, latent_dim=64, bottom=4, dims=(128, 128, 64, 32), depths=(1, 2, 2, 1),
           heads=(4, 4, 2, 1), window=8, swin_from=16, mlp_ratio=2.0, num_classes=10,
           class_embed_dim=64, adanorm="trunk"),
        "imgtx: CPU-sized; depths from the paper's 32^2 G plot labels, one block at 32^2",
        discriminator=_d(image_size=32, num_classes=10, stem_stride=2, dims=(32, 64, 128),
                         depths=(2, 2), heads=(1, 2), window=8, mlp_ratio=2.0,
                         residual="identity", aux_classifier=True, diffaug="translation"),
        train={"batch_size": 16, "loss": "hinge", "n_critic": 1, "lr": 2e-4}),
}


def get_strans_config(name: str, **overrides) -> STransGeneratorConfig:
    """A fresh copy of the named generator config, with field overrides."""
    return lookup(STRANS_CONFIGS, name, "STrans config", **overrides)
