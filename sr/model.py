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
from imgtx.likelihood import categorical_nll, dmol_nll_per_pixel
from imgtx.model import ImageTransformer, check_images
from imgtx.neighbours import decoding_order
from imgtx.resample import downscale_area
from imgtx.sr.anchor import AnchoredDecoder, AnchoredPixelDecoder, make_anchors
from imgtx.sr.blockmean import BlockMeanConstraint
from imgtx.sr.configs import SuperResolutionConfig
from imgtx.transformer import LearnedPositions2D, TransformerLayer, sinusoid_positions_2d

# make_anchors lives in imgtx.sr.anchor; it is re-exported here, where it used to be.
__all__ = ["SuperResolutionTransformer", "ImageEncoder", "make_low_res", "make_anchors",
           "nll_of_outputs"]

LN2 = math.log(2.0)


def make_low_res(high_res: torch.Tensor, config: SuperResolutionConfig) -> torch.Tensor:
    """The model's input for a high-resolution image: area downscaling by ``config.scale``
    (T2T ``image_utils.resize_by_area``, as in its CelebA 8x8 -> 32x32 problem):
    ``(B, 3, H, W)`` uint8 -> ``(B, 3, H/s, W/s)`` uint8."""
    return downscale_area(high_res.to(torch.uint8), config.scale, config.area_rounding)


def nll_of_outputs(config: SuperResolutionConfig, outputs: torch.Tensor,
                   high_res: torch.Tensor, low_res: torch.Tensor | None = None) -> torch.Tensor:
    """Nats of every output subpixel (categorical, ``(B, N)``) or pixel (DMOL, ``(B, N / 3)``),
    raster order, from the decoder outputs of :meth:`SuperResolutionTransformer.forward`. With
    ``config.block_means`` each value's distribution is truncated to the values its input pixel
    allows (:mod:`imgtx.sr.blockmean`); ``low_res`` is the input (None: ``make_low_res`` of
    ``high_res``)."""
    pixels = high_res.long().permute(0, 2, 3, 1)  # (B, H, W, 3)
    targets = pixels.flatten(1, 2) if config.likelihood == "dmol" else pixels.flatten(1)
    if config.likelihood == "dmol":
        nll = dmol_nll_per_pixel(outputs, targets)
    else:
        nll = categorical_nll(outputs, targets)
    if not config.block_means:
        return nll
    if low_res is None:
        low_res = make_low_res(high_res, config)
    decoder_config = config.decoder_config()
    raster, _ = decoding_order(decoder_config)  # model order -> raster index
    raster = raster.to(outputs.device)
    constraint = BlockMeanConstraint(decoder_config, low_res.to(outputs.device), config.scale,
                                     config.area_rounding)
    mass = constraint.log_mass(outputs[:, raster], targets[:, raster])  # (B, N) model order
    return nll.index_add(1, raster, mass.to(nll.dtype))


class ImageEncoder(nn.Module):
    """Full self-attention over the subpixels of the low-resolution image.

    ``forward(low_res)``: ``(B, 3, h, w)`` uint8 -> ``(B, Nin, D)``, positions in raster order.
    """

    def __init__(self, config: SuperResolutionConfig, *, backend: str = "auto") -> None:
        super().__init__()
        c, d = config, config.hidden_size
        self.config = config
        rows, cols = c.input_grid
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
            for _ in range(c.encoder_layers))
        self.final_norm = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.norm == "pre" else None

    def positions(self) -> torch.Tensor:
        """``(Nin, D)`` position encodings in raster order."""
        return self.learned_positions() if self.config.positions == "learned" else self.sinusoid

    def forward(self, low_res: torch.Tensor) -> torch.Tensor:
        check_images(low_res, self.config.input_size)
        values = low_res.long().permute(0, 2, 3, 1).flatten(1)  # (B, Nin) r,g,b per pixel
        x = self.embed(values + 256 * self.channel) * math.sqrt(self.config.hidden_size)
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
            decoder = AnchoredPixelDecoder if config.likelihood == "dmol" else AnchoredDecoder
        self.decoder = decoder(config.decoder_config(), context_dim=config.hidden_size,
                               backend=backend)
        self.reset_parameters()

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
                nn.init.xavier_uniform_(module.weight, gain=self.config.init_gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.encoder.embed.weight, std=self.config.hidden_size**-0.5)

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

    def forward(self, low_res: torch.Tensor, high_res: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N, 256)`` of every output subpixel (DMOL: parameters ``(B, N / 3, 10K)``
        of every pixel), raster order, given ``low_res`` ``(B, 3, h, w)`` and the earlier
        subpixels of ``high_res`` ``(B, 3, H, W)`` (uint8)."""
        if low_res.shape[0] != high_res.shape[0]:
            raise ValueError(f"low_res and high_res batches differ: {low_res.shape[0]} vs "
                             f"{high_res.shape[0]}")
        return self.decoder(high_res, context=self.encode(low_res), side=self.anchors(low_res))

    def nll(self, low_res: torch.Tensor, high_res: torch.Tensor) -> torch.Tensor:
        """Exact negative log-likelihood ``-log p(high_res | low_res)`` in nats, raster order:
        per output subpixel ``(B, N)`` (categorical) or per pixel ``(B, N / 3)`` (DMOL)."""
        return nll_of_outputs(self.config, self(low_res, high_res), high_res, low_res)

    def bits_per_dim(self, low_res: torch.Tensor, high_res: torch.Tensor) -> torch.Tensor:
        """Bits per output subpixel of each image given its input, ``(B,)``: total nats over the
        3*H*W subpixels / (3*H*W * ln 2)."""
        return self.nll(low_res, high_res).sum(dim=1) / (3 * high_res[0, 0].numel() * LN2)
