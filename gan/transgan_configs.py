"""TransGAN configurations: the generator and discriminator dataclasses and the named registry.

The paper settings come from VITA-Group/TransGAN at commit 6b85440 (Jiang, Chang, Wang,
NeurIPS 2021, arXiv 2102.07074): the launch scripts ``exps/*_train.py`` give the command-line
arguments, ``models_search/*.py`` the layer structure, ``functions.py::train`` the loop. Each
entry names its files. :mod:`imgtx.gan.configs` joins these entries with STrans's
(``imgtx.gan.strans_configs``) into the one GAN registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from imgtx.errors import UserError
from imgtx.registry import RegistryEntry, lookup

__all__ = ["TransGANGeneratorConfig", "TransGANDiscriminatorConfig", "TransGANEntry",
           "TRANSGAN_CONFIGS", "get_transgan_config", "UPSAMPLE_MODES", "NORMS"]

UPSAMPLE_MODES = ("pixel_shuffle", "bicubic", "updown_pixel_shuffle")
NORMS = ("ln", "pn")  # LayerNorm | PixelNorm ("modified normalisation")


def _check(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{name}={value!r}; expected one of {allowed}")


@dataclass
class TransGANGeneratorConfig:
    """Hyperparameters of :class:`imgtx.gan.transgan.TransGANGenerator` (saved as config.json).

    Stage ``i`` works on a ``bottom_width * 2**i`` square token grid; between stages the grid
    doubles by ``upsample[i]``: ``pixel_shuffle`` (width / 4), ``bicubic`` (same width) or
    ``updown_pixel_shuffle`` (the CelebA-HQ generator's anti-alias ``updown``: bicubic x4 then
    4x4 average pooling, then PixelShuffle). The attention backend is a run-time choice
    (``TransGANGenerator(config, backend=...)`` or ``set_backend``), not a config field.
    """

    #: Keys older config.json files may hold that no longer change the model; loaders drop them.
    IGNORED_CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("backend",)

    image_size: int = 32  # output side in pixels (= the last stage's grid side)
    latent_dim: int = 256  # z ~ N(0, I) width
    bottom_width: int = 8  # side of the first token grid
    dim: int = 1024  # width of the first stage (TransGAN gf_dim)
    depths: tuple[int, ...] = (5, 4, 2)  # blocks per stage (0: a stage without blocks)
    upsample: tuple[str, ...] = ("pixel_shuffle", "pixel_shuffle")  # len(depths) - 1 modes
    windows: tuple[int, ...] = (0, 0, 0)  # window side per stage; 0 or >= grid: global attention
    heads: int = 4
    mlp_ratio: float = 4.0
    norm: str = "ln"  # "ln" LayerNorm | "pn" PixelNorm
    relative_bias: bool = True  # a relative position bias table per block (TransGAN *_rp)
    noise: bool = False  # a learned scalar x per-token Gaussian noise before attention
    latent_attention: bool = False  # CelebA-HQ: cross-attention to an embedding of z per block
    num_classes: int = 0  # > 0: class-conditional through AdaNorm-T (imgtx.gan.conditioning)
    class_embed_dim: int = 128  # class-embedding width (conditional only)
    cond_hidden: int = 0  # 0: cond = concat(embed(y), z); > 0: an MLP of it to this width
    adanorm: str = "trunk"  # AdaNorm-T placement: "branch" | "trunk" | "both"
    checkpoint_blocks: bool = False  # activation checkpointing per block (training memory)

    def __post_init__(self) -> None:
        self.depths, self.upsample = tuple(self.depths), tuple(self.upsample)
        self.windows = tuple(self.windows)
        stages = len(self.depths)
        if not stages or len(self.upsample) != stages - 1 or len(self.windows) != stages:
            raise UserError(f"need one depth and window per stage and one upsample mode between "
                            f"stages, got depths {self.depths}, windows {self.windows}, "
                            f"upsample {self.upsample}")
        for mode in self.upsample:
            _check("upsample", mode, UPSAMPLE_MODES)
        _check("norm", self.norm, NORMS)
        if self.bottom_width * 2 ** (stages - 1) != self.image_size:
            raise UserError(f"{stages} stages from a {self.bottom_width}x{self.bottom_width} grid "
                            f"give {self.bottom_width * 2 ** (stages - 1)}px images, not "
                            f"image_size={self.image_size}")
        for side, width, window in zip(self.grids, self.dims, self.windows):
            if width < 1 or width % self.heads:
                raise UserError(f"stage width {width} (grid {side}) is not divisible by "
                                f"{self.heads} heads; widen dim or use fewer PixelShuffle steps")
            if 0 < window < side and side % window:
                raise UserError(f"window {window} does not divide the {side}x{side} grid")

    @property
    def grids(self) -> tuple[int, ...]:
        """Token-grid side of every stage."""
        return tuple(self.bottom_width * 2**i for i in range(len(self.depths)))

    @property
    def dims(self) -> tuple[int, ...]:
        """Width of every stage (PixelShuffle divides it by 4)."""
        widths = [self.dim]
        for mode in self.upsample:
            widths.append(widths[-1] if mode == "bicubic" else widths[-1] // 4)
        return tuple(widths)


@dataclass
class TransGANDiscriminatorConfig:
    """Hyperparameters of :class:`imgtx.gan.transgan.TransGANDiscriminator` (config.json).

    Scale ``s`` sees a ``image_size / (patch_size * 2**s)`` token grid. Scale 0 embeds
    ``patch_size`` patches to ``embed_dims[0]`` channels; every later scale average-pools the
    previous scale's tokens 2x2 and concatenates, along channels, its own embedding of
    ``patch_size * 2**s`` patches to ``embed_dims[s]`` channels, so its width is
    ``sum(embed_dims[:s+1])``. Scale ``s`` runs groups of blocks: ``depths[s][g]`` blocks with
    window ``windows[s][g]`` (0 or >= grid: global). Then a cls token, one global block, a norm
    and a linear head on the cls token.
    """

    image_size: int = 32  # input side in pixels
    dim: int = 384  # width of the last scale = sum(embed_dims) (TransGAN df_dim)
    patch_size: int = 2
    embed_dims: tuple[int, ...] = (288, 96)  # patch-embedding channels per scale
    depths: tuple[tuple[int, ...], ...] = ((3,), (3,))  # per scale: blocks per group
    windows: tuple[tuple[int, ...], ...] = ((0,), (0,))  # per scale: window per group
    overlap_first: bool = False  # scale 0 embeds with a 2p kernel, stride p, padding p/2
    heads: int = 4
    mlp_ratio: float = 4.0
    norm: str = "ln"  # "ln" | "pn"
    relative_bias: bool = True  # relative position bias in the scale blocks
    noise: bool = True  # a learned scalar x per-token Gaussian noise before attention
    diffaug: str = "translation,cutout,color"  # DiffAugment policy applied inside forward
    num_classes: int = 0  # > 0: projection discriminator (Miyato & Koyama 2018)
    aux_classifier: bool = False  # also an auxiliary classifier head (AC-GAN, Odena et al. 2017)
    checkpoint_blocks: bool = False  # activation checkpointing per block

    def __post_init__(self) -> None:
        self.embed_dims = tuple(self.embed_dims)
        self.depths = tuple(tuple(groups) for groups in self.depths)
        self.windows = tuple(tuple(groups) for groups in self.windows)
        scales = len(self.embed_dims)
        shapes_ok = len(self.depths) == scales and len(self.windows) == scales and all(
            len(d) == len(w) for d, w in zip(self.depths, self.windows))
        if not scales or not shapes_ok:
            raise UserError(f"need one (depths, windows) group list per scale, got embed_dims "
                            f"{self.embed_dims}, depths {self.depths}, windows {self.windows}")
        if sum(self.embed_dims) != self.dim:
            raise UserError(f"embed_dims {self.embed_dims} must sum to dim={self.dim}")
        _check("norm", self.norm, NORMS)
        if self.image_size % (self.patch_size * 2 ** (scales - 1)):
            raise UserError(f"image_size {self.image_size} is not divisible by the largest patch "
                            f"{self.patch_size * 2 ** (scales - 1)}")
        for width in self.widths:
            if width % self.heads:
                raise UserError(f"scale width {width} is not divisible by {self.heads} heads")
        for side, windows in zip(self.grids, self.windows):
            for window in windows:
                if 0 < window < side and side % window:
                    raise UserError(f"window {window} does not divide the {side}x{side} grid")
        from imgtx.gan.diffaugment import check_policy

        check_policy(self.diffaug)

    @property
    def grids(self) -> tuple[int, ...]:
        """Token-grid side of every scale."""
        side = self.image_size // self.patch_size
        return tuple(side // 2**s for s in range(len(self.embed_dims)))

    @property
    def widths(self) -> tuple[int, ...]:
        """Token width of every scale."""
        return tuple(sum(self.embed_dims[:s + 1]) for s in range(len(self.embed_dims)))


@dataclass
class TransGANEntry(RegistryEntry):
    """A named TransGAN pair: ``config`` is the generator's, ``discriminator`` the critic's."""

    discriminator: TransGANDiscriminatorConfig = field(
        default_factory=TransGANDiscriminatorConfig)


G, D = TransGANGeneratorConfig, TransGANDiscriminatorConfig
_REPO = "VITA-Group/TransGAN@6b85440"
_PS, _BI, _UD = "pixel_shuffle", "bicubic", "updown_pixel_shuffle"
# Training settings shared by the paper configs (exps/*_train.py): Adam(1e-4, (0, 0.99)) (the
# scripts' --wd 1e-3 is read only by --optimizer adamw), WGAN-GP with drift ("wgangp-eps", phi 1),
# gradient-norm clipping at 5 (functions.py::train). Every key is a GANTrainSettings field:
# - batch_size: D's real images per process and micro-batch. The scripts' -dis_bs is global
#   (train_derived.py divides it by the GPUs), so on one process batch_size = dis_bs.
# - grad_accum: --accumulated_times (D micro-batches per D step, its loss divided by their count).
# - g_batch_size: G's fresh latents per G step over all processes and micro-batches:
#   -gen_bs x --g_accumulated_times (functions.py draws g_accumulated_times batches of
#   gen_batch_size latents per G step and divides G's loss by that count).
# - ema_kimg, ema_warmup: with --ema_warmup > 0, beta = 0.5 ** (dis_bs / min(ema_kimg * 1000,
#   ema_warmup * images seen)) once per G step; with --ema_warmup 0 the fixed --ema is beta
#   (ema_decay here).
_TRAIN = {"loss": "wgan-gp", "lr": 1e-4, "betas": (0.0, 0.99), "clip_grad_norm": 5.0,
          # wgangp-eps: the drift term squares the mean critic value (functions.py)
          "loss_options": {"drift_of_mean": True}}
# The 256^2 scripts: a fixed EMA decay per G step (--ema 0.995, --ema_warmup left at 0).
_FIXED_EMA = {"ema_decay": 0.995, "ema_kimg": None, "ema_warmup": None}
# The official loop (functions.py::train) never zeroes D's gradients after the G step, so the G
# loss's gradient in D joins D's next step. The paper recipes reproduce it; imgtx's own recipes
# freeze D in the G step (the default), since with hinge at n_critic 1 that leftover cancels
# D's fake term and training collapses (docs/gan.md).
_OFFICIAL_STEP = {"isolate_d": False}

TRANSGAN_CONFIGS: dict[str, TransGANEntry] = {
    # exps/cifar_train.py: --gen_model ViT_custom_rp --dis_model ViT_custom_scale2_rp_noise
    # --latent_dim 256 --bottom_width 8 --gf_dim 1024 --g_depth 5,4,2 --df_dim 384 --d_depth 3
    # --patch_size 2 --diff_aug translation,cutout,color (norms default to ln). Counted from the
    # code: G 83,312,495, D 10,210,400 parameters.
    "transgan-cifar10": TransGANEntry(
        G(), f"{_REPO} exps/cifar_train.py; models_search/ViT_custom_rp.py (G), "
             "ViT_custom_scale2_rp_noise.py (D)",
        discriminator=D(),
        # -gen_bs 128 -dis_bs 64 --n_critic 4 --ema_kimg 500 --ema_warmup 0.1 (its --ema 0.9999
        # is unused: ema_warmup > 0).
        train={**_TRAIN, "batch_size": 64, "g_batch_size": 128, "n_critic": 4, "ema_kimg": 500,
               "ema_warmup": 0.1, **_OFFICIAL_STEP}),
    # exps/stl_train.py: same models, 48^2, --bottom_width 12 --latent_dim 512 --g_depth 7,5,3
    # --g_norm pn --d_norm pn --diff_aug translation,stl_erase_ratio,color --n_critic 5.
    # Counted from the code: G 168,466,623, D 10,341,536.
    "transgan-stl10": TransGANEntry(
        G(image_size=48, latent_dim=512, bottom_width=12, depths=(7, 5, 3), norm="pn"),
        f"{_REPO} exps/stl_train.py; models_search/ViT_custom_rp.py (G), "
        "ViT_custom_scale2_rp_noise.py (D)",
        discriminator=D(image_size=48, norm="pn", diffaug="translation,stl_erase_ratio,color"),
        # -gen_bs 64 -dis_bs 32 --n_critic 5 --ema_kimg 500 --ema_warmup 0.05.
        train={**_TRAIN, "batch_size": 32, "g_batch_size": 64, "n_critic": 5, "ema_kimg": 500,
               "ema_warmup": 0.05, **_OFFICIAL_STEP}),
    # exps/celeba_hq_256_train.py: --gen_model Celeba256_gen --dis_model Celeba256_dis
    # --g_window_size 16 --d_window_size 4 --g_norm pn --latent_dim 512. Celeba256_gen builds no
    # 8x8 blocks (the script's first depth, 5, is unused): bicubic 8->16->32 at width 1024, then
    # PixelShuffle, with the anti-alias updown before the last two; every block first
    # cross-attends to a 64-token embedding of z, and has noise and a relative position bias.
    # Celeba256_dis: 3 scales, first patch embedding overlapping (kernel 4, stride 2), windows 4,
    # no relative bias, no noise. Policy: the official adds ADA's "filter" (not implemented).
    "transgan-celebahq256": TransGANEntry(
        G(image_size=256, latent_dim=512, depths=(0, 4, 4, 4, 4, 4),
          upsample=(_BI, _BI, _PS, _UD, _UD), windows=(0, 0, 0, 16, 16, 16), norm="pn",
          noise=True, latent_attention=True),
        f"{_REPO} exps/celeba_hq_256_train.py; models_search/Celeba256_gen.py, "
        "Celeba256_dis.py",
        discriminator=D(image_size=256, patch_size=2, embed_dims=(96, 96, 192),
                        depths=((3,), (2, 1), (4,)), windows=((4,), (4, 0), (0,)),
                        overlap_first=True, relative_bias=False, noise=False,
                        diffaug="translation,erase_ratio,color,hue"),
        # -gen_bs 32 -dis_bs 16 --accumulated_times 4 --g_accumulated_times 4 --n_critic 4
        # --ema 0.995: D steps on 16 x 4 = 64 images, G on 32 x 4 = 128 latents.
        train={**_TRAIN, "batch_size": 16, "grad_accum": 4, "g_batch_size": 128,
               "n_critic": 4, **_FIXED_EMA, **_OFFICIAL_STEP}),
    # exps/church_256_train.py: --gen_model ViT_custom_local544444_256_rp_noise --dis_model
    # ViT_scale3_local_new_rp --g_depth 5,4,4,4,4,4 --g_window_size 16 --d_window_size 16
    # --patch_size 4 --g_norm pn --diff_aug translation,erase_ratio,color.
    "transgan-church256": TransGANEntry(
        G(image_size=256, latent_dim=512, depths=(5, 4, 4, 4, 4, 4),
          upsample=(_BI, _BI, _PS, _PS, _PS), windows=(0, 0, 0, 16, 16, 16), norm="pn",
          noise=True),
        f"{_REPO} exps/church_256_train.py; models_search/ViT_custom_local544444_256_rp_noise.py"
        " (G), ViT_scale3_local_new_rp.py (D)",
        discriminator=D(image_size=256, patch_size=4, embed_dims=(288, 48, 48),
                        depths=((2, 1), (3,), (4,)), windows=((16, 0), (0,), (0,)),
                        noise=False, diffaug="translation,erase_ratio,color"),
        # -gen_bs 16 -dis_bs 16 --accumulated_times 4 --g_accumulated_times 8 --n_critic 4
        # --ema 0.995: D steps on 16 x 4 = 64 images, G on 16 x 8 = 128 latents.
        train={**_TRAIN, "batch_size": 16, "grad_accum": 4, "g_batch_size": 128,
               "n_critic": 4, **_FIXED_EMA, **_OFFICIAL_STEP}),
    # Test-sized: a 32^2 step runs in well under a second on one CPU core; the last stage uses
    # 16x16 windows so the window path is exercised.
    "transgan-tiny": TransGANEntry(
        G(latent_dim=32, dim=128, depths=(1, 1, 1), windows=(0, 0, 16)),
        "imgtx: test-sized",
        discriminator=D(dim=64, embed_dims=(48, 16), depths=((1,), (1,))),
        train={**_TRAIN, "batch_size": 8, "n_critic": 1}),
    # CPU-sized (2 cores, ~1-2 hours on builtin:photos32): a 2.8M-parameter G, 0.75M D; the
    # CIFAR-10 layout at a quarter of the width, with 16x16 windows at 32^2 (4x less attention
    # than global there) and one block at the D's first scale. At batch 32: G step 41 GFLOP,
    # D step (with the gradient penalty) 74 GFLOP.
    "transgan-photos32-small": TransGANEntry(
        G(latent_dim=64, dim=256, depths=(2, 2, 2), windows=(0, 0, 16)),
        "imgtx: CPU-sized; the transgan-cifar10 layout at width 256 (G) and 128 (D)",
        discriminator=D(dim=128, embed_dims=(96, 32), depths=((1,), (2,))),
        train={**_TRAIN, "batch_size": 32, "n_critic": 2, "lr": 2e-4, "ema_kimg": 10,
               "ema_warmup": 0.05}),
}
del G, D


def get_transgan_config(name: str, **overrides) -> TransGANGeneratorConfig:
    """A fresh copy of the named TransGAN generator config, with field overrides."""
    return lookup(TRANSGAN_CONFIGS, name, "TransGAN config", **overrides)
