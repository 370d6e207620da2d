"""Named Image Transformer configurations: one registry, one dataclass.

Paper settings come from tensor2tensor ``models/image_transformer.py`` hparams and Parmar et al.
2018 (Tables 1-2); each entry names its source. The small ones are sized for CPU training; the
training settings suggested for ``small`` are the recipe of the shipped checkpoint
(``scripts/train_photos32_small.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from imgtx.registry import RegistryEntry, lookup

__all__ = ["ImageTransformerConfig", "CONFIGS", "get_config", "config_names", "RegistryEntry",
           "lookup"]


@dataclass
class ImageTransformerConfig:
    """Hyperparameters of :class:`imgtx.ImageTransformer` (serialised to ``config.json``).

    The attention backend is not a hyperparameter: pick it at run time
    (``ImageTransformer(config, backend=...)`` or ``model.set_backend(...)``).
    """

    #: Keys older config.json files may hold that no longer change the model; loaders drop them.
    IGNORED_CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("backend",)

    image_size: int = 32  # side of the square RGB image, in pixels
    likelihood: str = "cat"  # "cat": 256-way softmax per subpixel | "dmol": logistic mixture/pixel
    num_mixtures: int = 10  # DMOL mixture components
    attention: str = "local1d"  # "local1d" | "local2d" | "causal"
    block_length: int = 256  # local1d: query block b (block k sees blocks k-1 and k)
    query_shape: tuple[int, int] = (8, 32)  # local2d: query block (rows, cols) on the H x 3W grid
    memory_flange: tuple[int, int] = (8, 32)  # local2d: flange (rows above, cols each side)
    num_layers: int = 12
    hidden_size: int = 512  # model width d
    attention_size: int | None = None  # total q/k/v width over heads (None: hidden_size)
    ffn_size: int = 2048
    num_heads: int = 4
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.0
    norm: str = "post"  # "post": T2T "dan" (dropout, add, LayerNorm) | "pre": pre-norm
    positions: str = "sinusoid"  # "sinusoid": half rows / half columns | "learned": per axis
    num_classes: int = 0  # > 0: class-conditional (a class embedding added at every position)
    layer_norm_eps: float = 1e-6
    init_gain: float = 0.2 ** 0.5  # xavier_uniform gain (T2T uniform_unit_scaling 0.2)
    # DMOL: also feed each position the pixels around it that come before it (left, two left,
    # the three above, two above), through one linear layer, zero at initialisation.
    neighbour_inputs: bool = False
    # "med": predict each value relative to the LOCO-I median edge detector of its left, upper
    # and upper-left neighbours (DMOL: the means are corrections to it; categorical: logits over
    # the offset from it are added); "none": no predictor.
    predictor: str = "none"

    def __post_init__(self) -> None:
        self.query_shape = tuple(self.query_shape)
        self.memory_flange = tuple(self.memory_flange)
        checks = {
            "likelihood": (self.likelihood, ("cat", "dmol")),
            "attention": (self.attention, ("local1d", "local2d", "causal")),
            "norm": (self.norm, ("post", "pre")),
            "positions": (self.positions, ("sinusoid", "learned")),
            "predictor": (self.predictor, ("none", "med")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"config.{name}={value!r}; expected one of {allowed}")
        minimum = {"image_size": 1, "num_layers": 0, "hidden_size": 1, "ffn_size": 1,
                   "num_heads": 1, "block_length": 1, "num_mixtures": 1, "num_classes": 0}
        for name, least in minimum.items():  # (num_layers=0: embeddings and head only)
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"config.{name} must be an integer >= {least}, got {value!r}")
        if self.neighbour_inputs and self.likelihood != "dmol":
            raise ValueError("config.neighbour_inputs needs likelihood='dmol' (one position per "
                             "pixel)")
        if self.hidden_size % 4:
            raise ValueError("hidden_size must be divisible by 4 (2D sinusoidal positions)")

    @property
    def sequence_grid(self) -> tuple[int, int]:
        """The (rows, cols) grid of model positions: H x 3W subpixels, or H x W pixels (DMOL)."""
        per_pixel = 1 if self.likelihood == "dmol" else 3
        return self.image_size, self.image_size * per_pixel

    @property
    def sequence_length(self) -> int:
        rows, cols = self.sequence_grid
        return rows * cols


def _cfg(**kwargs) -> ImageTransformerConfig:
    return ImageTransformerConfig(**kwargs)


# scripts/train_photos32_small.py, which trained checkpoints/imgtx-photos32-small.
SMALL_RECIPE = {"batch_size": 8, "lr": 2e-3, "warmup": 200, "schedule": "noam"}


CONFIGS: dict[str, RegistryEntry] = {
    # T2T imagetransformer_cifar10_base / paper Table 1: 12 layers, 4 heads, block 256 -> 2.90 bpd
    "cifar10-cat-1d": RegistryEntry(
        _cfg(num_layers=12, hidden_size=512, ffn_size=2048, num_heads=4, block_length=256,
             dropout=0.3),
        "t2t imagetransformer_cifar10_base; Parmar et al. 2018 Table 1 (2.90 bpd)",
        train={"batch_size": 4, "warmup": 4000}),
    # T2T imagetransformer_imagenet32_base (paper uses 8 heads) -> 3.77 bpd
    "imagenet32-cat-1d": RegistryEntry(
        _cfg(num_layers=12, hidden_size=512, ffn_size=2048, num_heads=4, block_length=256,
             dropout=0.1),
        "t2t imagetransformer_imagenet32_base; paper Table 2 (3.77 bpd; paper: 8 heads)",
        train={"batch_size": 4, "warmup": 4000}),
    # T2T imagetransformer_base_imagenet_tpu-style 64x64: block 512, 8 heads
    "imagenet64-cat-1d": RegistryEntry(
        _cfg(image_size=64, num_layers=12, hidden_size=512, ffn_size=2048, num_heads=8,
             block_length=512, dropout=0.1),
        "t2t imagetransformer_base_imagenet_tpu (block 512, 8 heads; 64x64)",
        train={"batch_size": 1, "warmup": 4000}),
    # T2T imagetransformerpp_base_14l_8h_big_uncond_dr03_dan_p: DMOL, learned positions
    "cifar10-dmol": RegistryEntry(
        _cfg(likelihood="dmol", num_layers=14, hidden_size=256, attention_size=512, ffn_size=512,
             num_heads=8, block_length=256, dropout=0.2, positions="learned"),
        "t2t imagetransformerpp_base_14l_8h_big_uncond_dr03_dan_p (2.92 bpd, 4 days 8xP100)",
        train={"batch_size": 8, "warmup": 4000}),
    # T2T img2img/imagetransformer2d_base: 8 layers, q(16,16) flange(16,32)
    "cifar10-cat-2d": RegistryEntry(
        _cfg(attention="local2d", num_layers=8, hidden_size=512, ffn_size=2048, num_heads=8,
             query_shape=(16, 16), memory_flange=(16, 32), dropout=0.1),
        "t2t imagetransformer2d_base (image_transformer_2d.py)",
        train={"batch_size": 4, "warmup": 4000}),
    # CPU-sized: used by tests and the shipped photos32 checkpoint.
    "tiny": RegistryEntry(
        _cfg(image_size=8, num_layers=2, hidden_size=32, ffn_size=64, num_heads=2,
             block_length=16, dropout=0.0, norm="pre"),
        "imgtx: test-sized", train={"batch_size": 8, "warmup": 50}),
    # The shipped checkpoint imgtx-photos32-small: train= is scripts/train_photos32_small.py's.
    "small": RegistryEntry(
        _cfg(num_layers=4, hidden_size=128, ffn_size=384, num_heads=4, block_length=96,
             dropout=0.0, norm="pre"),
        "imgtx: CPU-sized 1D model (block = one image row of 32x3 subpixels)",
        train=dict(SMALL_RECIPE)),
    "small-2d": RegistryEntry(
        _cfg(attention="local2d", num_layers=4, hidden_size=128, ffn_size=384, num_heads=4,
             query_shape=(4, 24), memory_flange=(4, 12), dropout=0.0, norm="pre"),
        "imgtx: CPU-sized 2D model", train={"batch_size": 16, "warmup": 200, "lr": 2e-3}),
    "small-dmol": RegistryEntry(
        _cfg(likelihood="dmol", num_layers=4, hidden_size=128, ffn_size=384, num_heads=4,
             block_length=64, dropout=0.0, norm="pre", positions="learned"),
        "imgtx: CPU-sized DMOL model", train={"batch_size": 16, "warmup": 200, "lr": 2e-3}),
    # scripts/train_photos_dmol.py: small-dmol with the pixels around each position as inputs
    # (docs/benchmarks.md).
    "small-dmol-photo": RegistryEntry(
        _cfg(likelihood="dmol", num_layers=4, hidden_size=128, ffn_size=384, num_heads=4,
             block_length=64, dropout=0.0, norm="pre", positions="learned",
             neighbour_inputs=True),
        "imgtx: CPU-sized DMOL photo model (small-dmol with neighbour inputs)",
        train={"batch_size": 16, "warmup": 200, "lr": 2e-3}),
    # scripts/train_photos_dmol.py: small-dmol-photo whose means are corrections to the LOCO-I
    # median edge predictor (docs/benchmarks.md).
    "small-dmol-med": RegistryEntry(
        _cfg(likelihood="dmol", num_layers=4, hidden_size=128, ffn_size=384, num_heads=4,
             block_length=64, dropout=0.0, norm="pre", positions="learned",
             neighbour_inputs=True, predictor="med"),
        "imgtx: CPU-sized DMOL photo model (small-dmol-photo, means relative to the median edge "
        "predictor)", train={"batch_size": 16, "warmup": 200, "lr": 2e-3}),
}


def config_names() -> list[str]:
    return list(CONFIGS)


def get_config(name: str, **overrides) -> ImageTransformerConfig:
    """A fresh copy of the named configuration, with field overrides."""
    return lookup(CONFIGS, name, **overrides)
