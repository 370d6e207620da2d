"""The super-resolution Image Transformer: an encoder-decoder (Parmar et al. 2018; T2T
``image_transformer_2d.Img2imgTransformer``).

* **Encoder.** The low-resolution image as a sequence of subpixels (an ``h x 3w`` grid: r,g,b of
  pixel (0,0), then of (0,1), ...), embedded with the Image Transformer's channel embeddings
  (value + 256 * channel, times sqrt(d)) plus 2D positions, then full self-attention layers.
* **Decoder.** An :class:`imgtx.ImageTransformer` on the high-resolution image (same subpixel
  order, local 1D or local 2D self-attention, categorical head) whose every layer also
  cross-attends, in full, to the encoder output: self-attention, cross-attention, FFN.
* **Anchor** (``config.anchor``; an imgtx extension, off in the paper configs). The decoder is
  then an :class:`imgtx.sr.anchor.AnchoredDecoder`: a fixed upscale of the input (PIL bicubic, or
  nearest) is each output subpixel's anchor, an input embedding and a second output table over
  ``value - anchor``; see :mod:`imgtx.sr.anchor`.
* **Block means** (``config.block_means``; an imgtx extension). Every output value's distribution
  is truncated to the values that keep its block's mean equal to the input pixel, an exact
  conditional likelihood never above the unrestricted one; see :mod:`imgtx.sr.blockmean`.

Shapes: B batch, h/w input rows/cols, H/W output rows/cols, Nin = 3hw, N = 3HW, D model width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from imgtx.attention import Full, set_backend
from imgtx.hub import HubModel
from imgtx.model import ImageTransformer, LikelihoodOutput, check_images
from imgtx.resample import downscale_area
from imgtx.sampling import decode, decode_fixed_point, draws
from imgtx.sr.anchor import AnchoredDecoder, AnchoredPixelDecoder, StayNearAnchor, make_anchors
from imgtx.sr.blockmean import BlockMeanConstraint, BlockMeanPolicy
from imgtx.sr.configs import SuperResolutionConfig
from imgtx.transformer import LearnedPositions2D, TransformerLayer, sinusoid_positions_2d

# make_anchors lives in imgtx.sr.anchor; it is re-exported here, where it used to be.
__all__ = ["SuperResolutionTransformer", "ImageEncoder", "make_low_res", "make_anchors"]


def make_low_res(high_res: torch.Tensor, config: SuperResolutionConfig) -> torch.Tensor:
    """The model's input for a high-resolution image: area downscaling by ``config.scale``
    (T2T ``image_utils.resize_by_area``, as in its CelebA 8x8 -> 32x32 problem):
    ``(B, 3, H, W)`` uint8 -> ``(B, 3, H/s, W/s)`` uint8."""
    return downscale_area(high_res.to(torch.uint8), config.scale, config.area_rounding)


class ImageEncoder(nn.Module):
    """Full self-attention over the subpixels of the low-resolution image.

    ``forward(low_res)``: ``(B, 3, h, w)`` uint8 -> ``(B, Nin, D)``, positions in raster order.
    """

    def __init__(self, config: SuperResolutionConfig, *, backend: str = "auto") -> None:
        super().__init__()
        c, d = config.decoder, config.decoder.hidden_size  # the encoder shares these settings
        self.config = config
        rows, cols = config.input_grid
        self.embed = nn.Embedding(256 * 3, d)  # channel c looks up value + 256*c (T2T)
        if c.positions == "learned":
            self.learned_positions = LearnedPositions2D(rows, cols, d)
        else:
            self.register_buffer("sinusoid", sinusoid_positions_2d(rows, cols, d),
                                 persistent=False)
        self.register_buffer("channel", torch.arange(rows * cols) % 3, persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(d, c.num_heads, c.ffn_size, Full(), attention_size=c.attention_size,
                             dropout=c.dropout, attention_dropout=c.attention_dropout,
                             norm=c.norm, eps=c.layer_norm_eps, backend=backend)
            for _ in range(config.encoder_layers))
        self.final_norm = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.norm == "pre" else None

    def positions(self) -> torch.Tensor:
        """``(Nin, D)`` position encodings in raster order."""
        learned = self.config.decoder.positions == "learned"
        return self.learned_positions() if learned else self.sinusoid

    def forward(self, low_res: torch.Tensor) -> torch.Tensor:
        check_images(low_res, self.config.input_size)
        values = low_res.long().permute(0, 2, 3, 1).flatten(1)  # (B, Nin) r,g,b per pixel
        x = self.embed(values + 256 * self.channel) * math.sqrt(self.config.decoder.hidden_size)
        x = self.dropout(x + self.positions())  # (B, Nin, D)
        for layer in self.layers:
            x = layer(x)
        return x if self.final_norm is None else self.final_norm(x)


class SuperResolutionTransformer(HubModel):
    """Encoder-decoder Image Transformer for super-resolution (``input_size`` -> ``input_size *
    scale``), with a categorical distribution per output subpixel (or, ``likelihood="dmol"``, a
    discretized mixture of logistics per output pixel).

    ``forward(low_res, high_res)`` gives the logits of every output subpixel given the input and
    all earlier output subpixels; :meth:`nll` / :meth:`bits_per_dim` are exact conditional
    likelihoods; :mod:`imgtx.sr.upscale` samples with the KV cache and tiles images of any size.
    """

    model_card_tags = ("image-transformer", "super-resolution", "encoder-decoder")
    model_card_description = (
        "Super-resolution Image Transformer (Parmar et al. 2018): full self-attention encoder "
        "over the low-resolution subpixels, local self-attention decoder with cross-attention, "
        "categorical output per subpixel (or, likelihood dmol, a discretized mixture of "
        "logistics per pixel); trained with imgtx. Upscale any image with "
        "`imgtx sr upscale --model DIR input.png output.png`.")

    def __init__(self, config: SuperResolutionConfig, *, backend: str = "auto") -> None:
        super().__init__(config)
        self.encoder = ImageEncoder(config, backend=backend)
        decoder = ImageTransformer
        if config.anchor != "none":
            dmol = config.decoder.likelihood == "dmol"
            decoder = AnchoredPixelDecoder if dmol else AnchoredDecoder
        self.decoder = decoder(config.decoder_config(), context_dim=config.decoder.hidden_size,
                               backend=backend)
        self.reset_parameters()

    @classmethod
    def config_from_saved(cls, data, where: str = "config.json") -> SuperResolutionConfig:
        """Also reads ``config.json`` files written before the decoder's settings were nested
        (:meth:`SuperResolutionConfig.from_dict` upgrades them)."""
        return SuperResolutionConfig.from_dict(data, where)

    @classmethod
    def override_config(cls, config: SuperResolutionConfig, overrides) -> SuperResolutionConfig:
        """``config_overrides`` may also name the decoder's settings by their flat names."""
        return config.updated(**overrides)

    def set_backend(self, backend: str) -> SuperResolutionTransformer:
        """Compute every attention layer (encoder and decoder) with ``backend`` from now on
        (see :func:`imgtx.attention.attend`); returns the model."""
        set_backend(self, backend)
        return self

    def reset_parameters(self) -> None:
        """T2T initialisation (xavier-uniform with the config's gain; embeddings N(0, 1/d)),
        the same scheme as the Image Transformer's."""
        self.decoder.reset_parameters()
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=self.config.decoder.init_gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.encoder.embed.weight, std=self.config.decoder.hidden_size**-0.5)

    def encode(self, low_res: torch.Tensor) -> torch.Tensor:
        """The encoder output ``(B, Nin, D)`` for ``low_res`` ``(B, 3, h, w)`` uint8; compute it
        once per batch and pass it as the decoder's ``context``."""
        return self.encoder(low_res)

    def low_res(self, high_res: torch.Tensor) -> torch.Tensor:
        """The input this model was trained on for ``high_res``: see :func:`make_low_res`."""
        return make_low_res(high_res, self.config)

    def anchors(self, low_res: torch.Tensor) -> torch.Tensor | None:
        """The decoder's anchors for ``low_res``: see :func:`make_anchors`."""
        return make_anchors(low_res, self.config)

    def targets(self, high_res: torch.Tensor) -> torch.Tensor:
        """Raster-order subpixels ``(B, N)`` long of ``high_res`` ``(B, 3, H, W)``."""
        return self.decoder.targets(high_res)

    def forward(self, low_res: torch.Tensor, high_res: torch.Tensor, *,
                with_loss: bool = False) -> torch.Tensor | LikelihoodOutput:
        """Logits ``(B, N, 256)`` of every output subpixel (DMOL: parameters ``(B, N / 3, 10K)``
        of every pixel), raster order, given ``low_res`` ``(B, 3, h, w)`` and the earlier
        subpixels of ``high_res`` ``(B, 3, H, W)`` (uint8); with ``with_loss`` also each target's
        exact conditional bits/dim ``(B,)`` (a :class:`imgtx.model.LikelihoodOutput`)."""
        if low_res.shape[0] != high_res.shape[0]:
            raise ValueError(f"low_res and high_res batches differ: {low_res.shape[0]} vs "
                             f"{high_res.shape[0]}")
        outputs = self.decoder(high_res, context=self.encode(low_res), side=self.anchors(low_res))
        if not with_loss:
            return outputs
        nats = self.nll_of_outputs(outputs, low_res, high_res)
        return LikelihoodOutput(outputs, self.decoder.bits_of_nll(nats))

    def nll_of_outputs(self, outputs: torch.Tensor, low_res: torch.Tensor,
                       high_res: torch.Tensor) -> torch.Tensor:
        """Nats of every output subpixel (categorical, ``(B, N)``) or pixel (DMOL,
        ``(B, N / 3)``), raster order, from the outputs of :meth:`forward`: the decoder's NLL,
        with ``config.block_means`` each value's distribution truncated to the values its input
        pixel allows (:mod:`imgtx.sr.blockmean`)."""
        nats = self.decoder.nll_of_outputs(outputs, high_res)
        if not self.config.block_means:
            return nats
        decoder = self.decoder
        constraint = BlockMeanConstraint(decoder.config, low_res.to(outputs.device),
                                         self.config.scale, self.config.area_rounding)
        mass = constraint.log_mass(decoder.to_sequence(outputs),
                                   decoder.to_sequence(decoder.targets(high_res)))  # model order
        return nats + decoder.to_raster(mass.to(nats.dtype))

    def nll(self, low_res: torch.Tensor, high_res: torch.Tensor) -> torch.Tensor:
        """Exact negative log-likelihood ``-log p(high_res | low_res)`` in nats, raster order:
        per output subpixel ``(B, N)`` (categorical) or per pixel ``(B, N / 3)`` (DMOL)."""
        return self.nll_of_outputs(self(low_res, high_res), low_res, high_res)

    def bits_per_dim(self, low_res: torch.Tensor, high_res: torch.Tensor) -> torch.Tensor:
        """Bits per output subpixel of each image given its input, ``(B,)``."""
        return self(low_res, high_res, with_loss=True).bits_per_dim

    # -- generation ----------------------------------------------------------------------------

    def decoding_rule(self, rule: StayNearAnchor | str | None = "auto") -> StayNearAnchor | None:
        """The temperature-0 rule to use: ``"auto"`` is ``config.anchor_rule`` for anchored
        models and plain argmax (None) otherwise; a :class:`StayNearAnchor` needs an anchored
        model."""
        if isinstance(rule, str):
            if rule != "auto":
                raise ValueError(f"rule must be 'auto', None or a StayNearAnchor, got {rule!r}")
            return StayNearAnchor(*self.config.anchor_rule) if self.config.anchor != "none" \
                else None
        if rule is not None and self.config.anchor == "none":
            raise ValueError("a StayNearAnchor rule needs an anchored model (config.anchor)")
        return rule

    def policy(self, low_res: torch.Tensor, anchors: torch.Tensor | None, temperature: float,
               generator: torch.Generator | None = None,
               rule: StayNearAnchor | str | None = "auto"):
        """The decoding policy (:mod:`imgtx.sampling`) for a batch of inputs ``low_res`` with
        their ``anchors``: the block-mean truncation for ``config.block_means`` models, the
        anchor ``rule`` at temperature 0 (see :meth:`decoding_rule`), plain draws otherwise."""
        rule = self.decoding_rule(rule) if temperature == 0 else None
        side_values = None
        if rule is not None:
            side_values = self.decoder.side_values(anchors, low_res.shape[0])  # model order
        if self.config.block_means:  # every output downscales exactly to its input
            constraint = BlockMeanConstraint(self.decoder.config, low_res, self.config.scale,
                                             self.config.area_rounding)
            return BlockMeanPolicy(constraint, temperature, generator, rule, side_values)
        if rule is not None:
            return rule.policy(side_values)
        return draws(self.decoder, temperature, generator)

    @torch.no_grad()
    def generate(self, low_res: torch.Tensor, *, temperature: float | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 rule: StayNearAnchor | str | None = "auto", batch_size: int = 64,
                 fixed_point: bool | None = None, use_cache: bool = True,
                 anchors: torch.Tensor | None = None, return_logits: bool = False,
                 progress: bool = False, stats: dict | None = None):
        """Upscale ``low_res`` by ``config.scale``.

        ``low_res`` is ``(B, 3, h, w)`` uint8 of the model's input size, decoded as one batch
        (encoded once, then KV-cached decoding), or an image ``(3, h, w)`` / a batch of any
        other size, upscaled in model-sized tiles, ``batch_size`` at a time
        (:func:`imgtx.sr.upscale.upscale_image`, which also says how tiles meet).

        Args:
            temperature: 0 takes the most likely value of each subpixel in decoding order (or
                the anchor ``rule``'s choice); None uses ``config.sampling_temperature``.
            seed, generator: the draws' randomness (a seed makes a generator).
            rule: at temperature 0, how an anchored model picks each value: ``"auto"`` is
                ``config.anchor_rule``, a :class:`StayNearAnchor` keeps the anchor unless the
                model is confident, None is plain argmax. Ignored above 0.
            fixed_point: at temperature 0, decode by fixed-point passes from the anchors
                (:func:`imgtx.sampling.decode_fixed_point`: the same output as one subpixel at
                a time). None: for anchored models with the KV cache on and no logits asked for.
            use_cache: KV-cached decoding; False re-runs the decoder for every subpixel.
            anchors: ``(B, 3, H, W)`` uint8 anchors (None: :meth:`anchors` of ``low_res``).
            return_logits: also return the decoder outputs used at every step, model order
                ``(B, N, 256 | 10K)`` (one batch only).
            progress: progress bars; stats: receives the fixed-point passes made.

        Returns:
            ``(B, 3, H, W)`` (or ``(3, H, W)``) uint8 (and the logits).
        """
        device = next(self.parameters()).device
        if generator is None and seed is not None:
            generator = torch.Generator(device).manual_seed(seed)
        size = self.config.input_size
        if low_res.dim() != 4 or low_res.shape[-2:] != (size, size):
            from imgtx.sr.upscale import upscale_image

            options = dict(temperature=temperature, generator=generator, rule=rule,
                           batch_size=batch_size, fixed_point=fixed_point, progress=progress,
                           stats=stats)
            if low_res.dim() == 3:
                return upscale_image(self, low_res, **options)
            return torch.stack([upscale_image(self, image, **options) for image in low_res])
        if temperature is None:
            temperature = self.config.sampling_temperature
        was_training = self.training
        self.eval()
        low_res = low_res.to(device)
        if anchors is None:
            anchors = self.anchors(low_res)
        context = self.encode(low_res)  # (B, Nin, D), once per batch
        policy = self.policy(low_res, anchors, temperature, generator, rule)
        if fixed_point is None:
            fixed_point = anchors is not None and use_cache and not return_logits
        if fixed_point and temperature == 0:
            if anchors is None or return_logits:
                raise ValueError("fixed-point decoding starts from the anchors of an anchored "
                                 "model and returns no per-step logits")
            result = decode_fixed_point(self.decoder, anchors, policy=policy, context=context,
                                        side=anchors, progress=progress, stats=stats)
        else:
            result = decode(self.decoder, low_res.shape[0], use_cache=use_cache,
                            return_outputs=return_logits, progress=progress, context=context,
                            side=anchors, policy=policy)
        self.train(was_training)
        return result
