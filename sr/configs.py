"""Named super-resolution configurations: one registry, one dataclass.

Paper settings come from tensor2tensor ``models/image_transformer_2d.py`` (``Img2imgTransformer``
and its ``img2img_transformer*`` hparams) and Parmar et al. 2018 (CelebA 8x8 -> 32x32);
each entry names its source. The small ones are sized for CPU; the training settings suggested
for ``photos-8to32-small`` are the recipe of the shipped checkpoint
(``scripts/train_sr_photos.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from imgtx.configs import ImageTransformerConfig, RegistryEntry, lookup
from imgtx.hub.config import config_from_dict

__all__ = ["SuperResolutionConfig", "CONFIGS", "get_config", "config_names", "ANCHORS",
           "DECODER_FIELDS"]

ANCHORS = ("none", "bicubic", "nearest")  # see SuperResolutionConfig.anchor and imgtx.sr.model


#: The decoder's settings under the names flat super-resolution configs gave them (config.json
#: files written before the decoder was nested, ``get_config`` overrides, ``--set``): flat name
#: -> field of :class:`ImageTransformerConfig`.
DECODER_FIELDS = {name: name for name in (
    "attention", "block_length", "query_shape", "memory_flange", "hidden_size", "attention_size",
    "ffn_size", "num_heads", "dropout", "attention_dropout", "norm", "positions",
    "layer_norm_eps", "init_gain", "predictor", "likelihood", "neighbour_inputs")}
DECODER_FIELDS["decoder_layers"] = "num_layers"


def _default_decoder() -> ImageTransformerConfig:
    # T2T img2img_transformer_base: 8 layers, d 512, ffn 2048, 8 heads, block 128, dropout 0.1
    return ImageTransformerConfig(image_size=32, block_length=128, memory_flange=(8, 64),
                                  num_layers=8, num_heads=8)


@dataclass
class SuperResolutionConfig:
    """Hyperparameters of :class:`imgtx.sr.SuperResolutionTransformer` (serialised to
    ``config.json``).

    The encoder reads the ``input_size``-square low-resolution image; the decoder, an Image
    Transformer of config ``decoder``, generates the ``input_size * scale``-square
    high-resolution image one subpixel at a time, cross-attending to the encoder. The encoder
    shares the decoder's width, heads, FFN, dropout, norm, positions and initialisation. The
    decoder's ``image_size`` (the output size) and ``num_classes`` (0) follow from this config.
    Its settings can also be read and set under their flat names (:data:`DECODER_FIELDS`, e.g.
    ``config.likelihood``, ``config.decoder_layers``). The attention backend is a run-time
    choice, not a field (``SuperResolutionTransformer.set_backend``).
    """

    #: Keys older config.json files may hold that no longer change the model; loaders drop them.
    IGNORED_CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("backend",)
    #: Names ``--set`` accepts besides the fields (imgtx.cli_options.apply_overrides).
    OVERRIDE_ALIASES: ClassVar[tuple[str, ...]] = tuple(DECODER_FIELDS)

    input_size: int = 8  # side of the low-resolution input, in pixels
    scale: int = 4  # upscaling factor: the output side is input_size * scale
    encoder_layers: int = 4  # full self-attention layers over the input's subpixels
    decoder: ImageTransformerConfig = field(default_factory=_default_decoder)
    area_rounding: str = "nearest"  # how training/eval inputs round the area mean: "nearest" |
    #                                 "floor" (T2T resize_by_area); see imgtx.eval.image_metrics
    sampling_temperature: float = 0.9  # default temperature of `imgtx sr upscale` / `sr eval`
    anchor: str = "none"  # imgtx extension, not in the paper: "bicubic" | "nearest" gives the
    #                       decoder that upscale of the input as a per-subpixel anchor (an input
    #                       embedding and logits over the offset from it); "none": the paper's model
    anchor_rule: tuple[float, float] = (0.9, 0.6)  # anchored models at temperature 0: keep
    #                   the anchor unless the most likely value has probability > [0] and beats
    #                   the anchor's by > [1] (imgtx.sr.anchor.StayNearAnchor(min_prob, margin))
    block_means: bool = False  # imgtx extension: restrict every output value to those that keep
    #                            its block's mean equal to the input pixel (exact; likelihood,
    #                            sampling and temperature 0; imgtx.sr.blockmean)

    def __post_init__(self) -> None:
        self.anchor_rule = tuple(float(v) for v in self.anchor_rule)
        if len(self.anchor_rule) != 2 or not all(0.0 <= v <= 1.0 for v in self.anchor_rule):
            raise ValueError(f"config.anchor_rule={self.anchor_rule}: expected (min_prob, "
                             "margin), both in [0, 1]")
        if self.input_size < 1 or self.scale < 2:
            raise ValueError(f"need input_size >= 1 and scale >= 2, got input_size="
                             f"{self.input_size}, scale={self.scale}")
        if self.encoder_layers < 1:
            raise ValueError(f"encoder_layers must be >= 1, got {self.encoder_layers}")
        if self.area_rounding not in ("nearest", "floor"):
            raise ValueError(f"config.area_rounding={self.area_rounding!r}; expected 'nearest' "
                             "or 'floor'")
        if self.anchor not in ANCHORS:
            raise ValueError(f"config.anchor={self.anchor!r}; expected one of {ANCHORS}")
        if self.sampling_temperature < 0:
            raise ValueError(f"sampling_temperature must be >= 0, got {self.sampling_temperature}")
        decoder = self.decoder
        if isinstance(decoder, dict):  # dataclasses.asdict of a config
            decoder = ImageTransformerConfig(**decoder)
        # The decoder models the output image, unconditionally (validated by its own rules).
        self.decoder = replace(decoder, image_size=self.output_size, num_classes=0)

    def __getattr__(self, name: str):
        # Only called for names that are not attributes: the decoder's flat names.
        if name in DECODER_FIELDS and "decoder" in self.__dict__:
            return getattr(self.decoder, DECODER_FIELDS[name])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in DECODER_FIELDS:
            setattr(self.decoder, DECODER_FIELDS[name], value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def flat(cls, **settings) -> SuperResolutionConfig:
        """A config from flat settings: its own fields and the decoder's (flat names), the
        decoder's defaults those of T2T ``img2img_transformer_base``."""
        return cls().updated(**settings)

    def updated(self, **changes) -> SuperResolutionConfig:
        """A copy with ``changes``: fields of this config, or the decoder's flat names."""
        nested = {DECODER_FIELDS[k]: v for k, v in changes.items() if k in DECODER_FIELDS}
        own = {k: v for k, v in changes.items() if k not in DECODER_FIELDS}
        decoder = own.pop("decoder", self.decoder)
        return replace(self, decoder=replace(decoder, **nested), **own)

    @classmethod
    def from_dict(cls, data: dict, where: str = "config.json") -> SuperResolutionConfig:
        """The config of a ``config.json`` dict. Decoder settings under their flat names (files
        written before the decoder was nested) are upgraded into ``decoder``; a flat file's
        missing ones take the flat defaults of that time."""
        flat = {k: v for k, v in data.items() if k in DECODER_FIELDS}
        if not flat:
            return config_from_dict(cls, data, where)
        decoder = data.get("decoder")
        decoder = dict(decoder) if isinstance(decoder, dict) else asdict(_default_decoder())
        decoder.update({DECODER_FIELDS[k]: v for k, v in flat.items()})
        own = {k: v for k, v in data.items() if k not in DECODER_FIELDS}
        return config_from_dict(cls, {**own, "decoder": decoder}, where)

    @property
    def output_size(self) -> int:
        """Side of the high-resolution output, in pixels."""
        return self.input_size * self.scale

    @property
    def input_grid(self) -> tuple[int, int]:
        """The encoder's (rows, cols) grid of subpixels: h x 3w."""
        return self.input_size, 3 * self.input_size

    def decoder_config(self) -> ImageTransformerConfig:
        """A copy of the decoder's config (an Image Transformer on the output image)."""
        return replace(self.decoder)


def _cfg(**kwargs) -> SuperResolutionConfig:
    return SuperResolutionConfig.flat(**kwargs)


# T2T img2img hparams: lr 0.2, warmup 12000, noam. With the extra 0.002*5000 constant of T2T's
# noam decay (utils/learning_rate.py) the peak is 0.2 * 10 * 512^-0.5 * 12000^-0.5 = 8.1e-4.
_T2T_TRAIN = {"batch_size": 2, "warmup": 12000, "lr": 8.1e-4}
_SMALL = dict(encoder_layers=2, decoder_layers=4, hidden_size=128, ffn_size=384, num_heads=4,
              dropout=0.0, norm="pre", sampling_temperature=0.5, anchor="bicubic")
_SMALL_TRAIN = {"batch_size": 8, "warmup": 200, "lr": 2e-3}
# scripts/train_sr_photos.py, which trained checkpoints/sr-photos-8to32-small: a lower peak rate
# and a shorter warm-up than from scratch, as the decoder is warm-started from the shipped Image
# Transformer (a path relative to the repository root).
PHOTOS_RECIPE = {"batch_size": 8, "lr": 1e-3, "warmup": 100, "schedule": "noam",
                 "decoder_init": "checkpoints/imgtx-photos32-small"}

CONFIGS: dict[str, RegistryEntry] = {
    # T2T img2img_transformer_b3 ("current best hparams for local 1d"): img2img_transformer_base
    # (4 encoder / 8 decoder layers, d 512, ffn 2048, 8 heads, dropout 0.1) with post-norm "dan",
    # block_length 128, sampling_temp 0.9, batch 2. CelebA 8x8 -> 32x32 (Parmar et al. 2018).
    "celeba-8to32-1d": RegistryEntry(
        _cfg(attention="local1d", block_length=128, encoder_layers=4, decoder_layers=8,
             hidden_size=512, ffn_size=2048, num_heads=8, dropout=0.1, norm="post",
             sampling_temperature=0.9),
        "t2t img2img_transformer_b3; Parmar et al. 2018 CelebA human eval (IT 1D: 35.94% fooled)",
        train=dict(_T2T_TRAIN)),
    # T2T img2img_transformer2d_n103 ("best config for img2img"): img2img_transformer2d_base
    # (pre-norm "n"/"da", d 512, ffn 2048, 8 heads) with 6 encoder / 12 decoder layers, query
    # (8, 32), flange (8, 64), dropout 0.1, batch 1; block-raster order. Paper: tau 0.8.
    "celeba-8to32-2d": RegistryEntry(
        _cfg(attention="local2d", query_shape=(8, 32), memory_flange=(8, 64), encoder_layers=6,
             decoder_layers=12, hidden_size=512, ffn_size=2048, num_heads=8, dropout=0.1,
             norm="pre", sampling_temperature=0.8),
        "t2t img2img_transformer2d_n103; Parmar et al. 2018 CelebA human eval (IT 2D: 36.11%)",
        train={**_T2T_TRAIN, "batch_size": 1}),
    # CPU-sized: the shipped checkpoint sr-photos-8to32-small (block 96 = one output row of
    # 32x3 subpixels, as the `small` Image Transformer).
    "photos-8to32-small": RegistryEntry(
        _cfg(attention="local1d", block_length=96, **_SMALL),
        "imgtx: CPU-sized 4x model for builtin:photos32", train=dict(PHOTOS_RECIPE)),
    # scripts/train_sr_photos.py --config photos-8to32-med: photos-8to32-small plus logits over
    # the offset from the median edge prediction (ImageTransformerConfig.predictor).
    "photos-8to32-med": RegistryEntry(
        _cfg(attention="local1d", block_length=96, predictor="med", **_SMALL),
        "imgtx: CPU-sized 4x model with the median edge predictor", train=dict(PHOTOS_RECIPE)),
    # checkpoints/sr-corpus-8to32-dmol: the decoder is small-dmol-med (DMOL over pixels,
    # neighbour inputs, means relative to the median edge prediction), warm-started from
    # checkpoints/imgtx-photos-dmol-small; every output is restricted to the values its input
    # pixel allows (block_means), and the anchors are the bicubic upscale projected onto the
    # input's block means. Training (scripts/train_sr_photos.py) keeps the decoder fixed and
    # moves only the encoder, cross-attention and 3x3 anchor inputs. Temperature 0 by default:
    # the decoder hardly reads its input, so its samples above 0 are noise that the block means
    # force into place (docs/super_resolution.md).
    "corpus-8to32-dmol": RegistryEntry(
        _cfg(attention="local1d", block_length=64, likelihood="dmol", neighbour_inputs=True,
             predictor="med", block_means=True, anchor_rule=(0.99, 0.97),
             **{**_SMALL, "positions": "learned", "sampling_temperature": 0.0}),
        "imgtx: CPU-sized 4x DMOL model for photos", train=dict(
            PHOTOS_RECIPE, batch_size=16, lr=1e-3, warmup=50, freeze_decoder=True,
            decoder_init="checkpoints/imgtx-photos-dmol-small")),
    "photos-8to32-small-2d": RegistryEntry(
        _cfg(attention="local2d", query_shape=(4, 24), memory_flange=(4, 12), **_SMALL),
        "imgtx: CPU-sized 4x model, local 2D decoder", train=dict(_SMALL_TRAIN)),
    "photos-16to32-small": RegistryEntry(
        _cfg(input_size=16, scale=2, attention="local1d", block_length=96, **_SMALL),
        "imgtx: CPU-sized 2x model (encoder over 768 input subpixels)", train=dict(_SMALL_TRAIN)),
    "photos-4to32-small": RegistryEntry(
        _cfg(input_size=4, scale=8, attention="local1d", block_length=96, **_SMALL),
        "imgtx: CPU-sized 8x model", train=dict(_SMALL_TRAIN)),
    # Test-sized: 4x4 -> 16x16.
    "tiny": RegistryEntry(
        _cfg(input_size=4, scale=4, block_length=16, encoder_layers=1, decoder_layers=2,
             hidden_size=32, ffn_size=64, num_heads=2, dropout=0.0, norm="pre"),
        "imgtx: test-sized", train={"batch_size": 8, "warmup": 50, "lr": 2e-3}),
    "tiny-2d": RegistryEntry(
        _cfg(input_size=4, scale=4, attention="local2d", query_shape=(4, 12),
             memory_flange=(2, 6), encoder_layers=1, decoder_layers=2, hidden_size=32,
             ffn_size=64, num_heads=2, dropout=0.0, norm="pre"),
        "imgtx: test-sized, local 2D decoder", train={"batch_size": 8, "warmup": 50, "lr": 2e-3}),
}


def config_names() -> list[str]:
    return list(CONFIGS)


def get_config(name: str, **overrides) -> SuperResolutionConfig:
    """A fresh copy of the named configuration, with overrides of its fields or of the decoder's
    settings under their flat names (:data:`DECODER_FIELDS`)."""
    own = {f.name for f in fields(SuperResolutionConfig)}
    config = lookup(CONFIGS, name, "super-resolution config",
                    **{k: v for k, v in overrides.items() if k in own})
    return config.updated(**{k: v for k, v in overrides.items() if k not in own})
