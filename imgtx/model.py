"""The Image Transformer (Parmar et al. 2018): a decoder-only autoregressive image model.

Sequence layout (DESIGN §3): every colour channel of every pixel is a position, raster order with
the channel innermost - r,g,b of pixel (0,0), then of (0,1), ... - i.e. a grid of H x 3W subpixels.
DMOL models use one position per pixel (a grid of H x W). Local 2D attention runs the whole model
in *block-raster* order of that grid (training shift, loss and sampling alike); inputs and outputs
of the public methods are always in raster order.

Shapes: B batch, H/W image rows/cols, N = number of positions, D model width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from imgtx.attention import (
    Causal,
    Local1D,
    Local2D,
    Pattern,
    block_raster_to_raster,
    raster_to_block_raster,
)
from imgtx.configs import ImageTransformerConfig
from imgtx.hub import HubModel
from imgtx.likelihood import categorical_nll, dmol_nll_per_pixel
from imgtx.transformer import LearnedPositions2D, TransformerLayer, sinusoid_positions_2d

__all__ = ["ImageTransformer", "check_images", "pattern_for"]

LN2 = math.log(2.0)
DEFAULT_OFFSET_SCALE = 8.0  # Laplace scale of a fresh anchored model's offset prior, in levels


def pattern_for(config: ImageTransformerConfig, grid: tuple[int, int] | None = None) -> Pattern:
    """The self-attention pattern of a config on its sequence grid."""
    rows, cols = grid or config.sequence_grid
    if config.attention == "local1d":
        return Local1D(config.block_length)
    if config.attention == "local2d":
        return Local2D(rows, cols, config.query_shape, config.memory_flange)
    return Causal()


def check_images(images: torch.Tensor, size: int) -> None:
    """Raise a clear error unless ``images`` is uint8/long ``(B, 3, size, size)``."""
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
        raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got "
                         f"{tuple(images.shape)}; resize or crop them to {size}x{size} first")
    if images.dtype not in (torch.uint8, torch.int64, torch.int32):
        raise ValueError(f"expected integer pixel values 0..255 (uint8), got {images.dtype}")


class ImageTransformer(HubModel):
    """Decoder-only Image Transformer with a categorical or DMOL likelihood.

    ``forward(images, labels)`` returns the head's outputs for every position given the previous
    ones; :meth:`nll` returns exact negative log-likelihoods; :mod:`imgtx.sampling` samples with
    the KV cache.

    With ``context_dim`` every layer also cross-attends to a ``context`` ``(B, Nc, context_dim)``
    (an encoder's output) passed to ``forward``/``nll``/``bits_per_dim`` and to
    :func:`imgtx.sampling.decode`: the decoder of :class:`imgtx.sr.SuperResolutionTransformer`. Such a
    decoder is saved as part of its encoder-decoder model, not on its own.

    With ``anchored=True`` (categorical only) every position also gets an *anchor* ``a``: a guess
    of its value known before decoding starts (super-resolution: the bicubic upscale of the
    input). The anchor enters twice:

    * inputs: position t adds an embedding of its own anchor ``a_t`` and of the previous
      subpixel's residual ``x_{t-1} - a_{t-1}`` (both functions of known values, so causality
      holds);
    * output: ``logits[v] = head(h)[v] + offset_head(h)[v - a_t + 255]``, a 511-way table over
      the offset from the anchor added to the usual 256-way one. The softmax is still over the
      256 values, so the likelihood stays an exact categorical.

    ``anchors`` is then passed to ``forward``/``nll``/``bits_per_dim`` and to ``decode`` as an
    image ``(B, 3, H, W)`` uint8.
    """

    model_card_tags = ("image-transformer", "autoregressive", "likelihood")
    model_card_description = ("Image Transformer (Parmar et al. 2018), autoregressive over "
                              "subpixels with local self-attention; trained with imgtx.")

    def __init__(self, config: ImageTransformerConfig, context_dim: int | None = None,
                 anchored: bool = False) -> None:
        super().__init__(config)
        if anchored and config.likelihood != "cat":
            raise ValueError("anchored=True needs the categorical likelihood, got "
                             f"likelihood={config.likelihood!r}")
        self.anchored = anchored
        c = config
        d = c.hidden_size
        self.rows, self.cols = c.sequence_grid
        self.pattern = pattern_for(c)
        self.block_raster = isinstance(self.pattern, Local2D)
        if c.likelihood == "cat":
            # One table for the 3 channels: channel c looks up value + 256*c (T2T modalities).
            self.embed = nn.Embedding(256 * 3, d)
            self.head = nn.Linear(d, 256)
        else:
            self.embed = nn.Linear(3, d)  # a pixel's 3 values in [-1, 1] -> one position
            self.head = nn.Linear(d, 10 * c.num_mixtures)
        if anchored:
            self.anchor_embed = nn.Embedding(256 * 3, d)  # a_t + 256*channel
            self.residual_embed = nn.Embedding(511 * 3, d)  # x - a + 255 + 511*channel
            self.offset_head = nn.Linear(d, 511)  # logit of offset v - a, at index v - a + 255
        if c.positions == "learned":
            self.learned_positions = LearnedPositions2D(self.rows, self.cols, d)
        else:
            self.register_buffer("sinusoid", sinusoid_positions_2d(self.rows, self.cols, d),
                                 persistent=False)
        self.class_embed = nn.Embedding(c.num_classes, d) if c.num_classes else None
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(d, c.num_heads, c.ffn_size, self.pattern,
                             attention_size=c.attention_size, dropout=c.dropout,
                             attention_dropout=c.attention_dropout, norm=c.norm,
                             eps=c.layer_norm_eps, backend=c.backend, context_dim=context_dim)
            for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.norm == "pre" else None
        # Channel index of every sequence position (categorical embedding offset).
        channel = torch.arange(self.rows * self.cols) % 3
        self.register_buffer("channel", self.to_sequence(channel[None])[0], persistent=False)
        self.reset_parameters()

    # -- layout helpers ------------------------------------------------------------------------

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Raster order -> model order along dim 1 (identity unless local 2D)."""
        if not self.block_raster:
            return x
        return raster_to_block_raster(x, self.rows, self.cols, self.config.query_shape)

    def to_raster(self, x: torch.Tensor) -> torch.Tensor:
        """Model order -> raster order along dim 1."""
        if not self.block_raster:
            return x
        return block_raster_to_raster(x, self.rows, self.cols, self.config.query_shape)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Raster-order targets: ``(B, H*W*3)`` long subpixels, or ``(B, H*W, 3)`` for DMOL."""
        check_images(images, self.config.image_size)
        pixels = images.long().permute(0, 2, 3, 1)  # (B, H, W, 3)
        if self.config.likelihood == "dmol":
            return pixels.flatten(1, 2)
        return pixels.flatten(1)

    # -- model ---------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        gain = self.config.init_gain
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        d = self.config.hidden_size
        if isinstance(self.embed, nn.Embedding):
            nn.init.normal_(self.embed.weight, std=d**-0.5)  # then scaled by sqrt(d), as T2T
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=d**-0.5)
        if self.anchored:
            nn.init.normal_(self.anchor_embed.weight, std=d**-0.5)
            nn.init.normal_(self.residual_embed.weight, std=d**-0.5)
            # A fresh anchored model predicts a discrete Laplace around the anchor whatever its
            # hidden state: the value head starts at zero and the offset head at a prior
            # (see set_offset_prior), so temperature 0 returns the anchors until trained.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            nn.init.zeros_(self.offset_head.weight)
            self.set_offset_prior(-torch.arange(-255, 256).abs().float() / DEFAULT_OFFSET_SCALE)

    @torch.no_grad()
    def set_offset_prior(self, log_probs: torch.Tensor) -> None:
        """Set the offset head's bias to ``log_probs`` ``(511,)`` over offsets -255..255 (e.g.
        the log histogram of ``target - anchor`` on training data), normalised. Initialising an
        output bias to the log marginal is the usual way to start a classifier calibrated."""
        if not self.anchored:
            raise ValueError("set_offset_prior needs a model built with anchored=True")
        log_probs = torch.as_tensor(log_probs, dtype=torch.float32)
        if log_probs.shape != (511,) or not torch.isfinite(log_probs).all():
            raise ValueError(f"expected 511 finite log-probabilities, got {tuple(log_probs.shape)}")
        self.offset_head.bias.copy_(torch.log_softmax(log_probs, dim=0))

    def positions(self) -> torch.Tensor:
        """Position encodings in model order, ``(N, D)``."""
        table = self.learned_positions() if self.config.positions == "learned" else self.sinusoid
        return self.to_sequence(table[None])[0]

    def embed_values(self, values: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """Input embeddings: categorical ``values`` ``(B, n)`` long with their ``channel`` ``(n,)``
        -> ``(B, n, D)``; DMOL ``values`` ``(B, n, 3)`` long pixels -> ``(B, n, D)``."""
        if self.config.likelihood == "cat":
            return self.embed(values + 256 * channel) * math.sqrt(self.config.hidden_size)
        return self.embed(values.float() / 127.5 - 1.0)

    def anchor_values(self, anchors: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Model-order anchor subpixels ``(B, N)`` long of an anchored model's ``anchors``
        ``(B, 3, H, W)`` uint8; None for a model without anchors (which must get none)."""
        if not self.anchored:
            if anchors is not None:
                raise ValueError("this model was built without anchors; pass anchors=None")
            return None
        if anchors is None:
            raise ValueError("this model is anchored: pass anchors (B, 3, H, W) uint8, e.g. the "
                             "bicubic upscale of the low-resolution input")
        values = self.to_sequence(self.targets(anchors)).to(self.channel.device)
        if values.shape[0] != batch:
            raise ValueError(f"anchors have batch {values.shape[0]}, expected {batch}")
        return values

    def input_embeddings(self, values: torch.Tensor, channel: torch.Tensor,
                         anchors: torch.Tensor | None) -> torch.Tensor:
        """What a value contributes to the *next* position's input: its embedding, plus for
        anchored models the embedding of its residual from its own anchor. ``values`` and
        ``anchors`` ``(B, n)`` long with their ``channel`` ``(n,)`` -> ``(B, n, D)``."""
        x = self.embed_values(values, channel)
        if anchors is not None:
            offsets = values - anchors + 255 + 511 * channel
            x = x + self.residual_embed(offsets) * math.sqrt(self.config.hidden_size)
        return x

    def anchor_inputs(self, anchors: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """What a position's own anchor adds to its input: ``(B, n)`` -> ``(B, n, D)``."""
        return self.anchor_embed(anchors + 256 * channel) * math.sqrt(self.config.hidden_size)

    def condition(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """The class embedding ``(B, 1, D)`` added at every position, or None."""
        if self.class_embed is None:
            return None
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels (B,) in "
                             f"[0, {self.config.num_classes})")
        labels = torch.as_tensor(labels, device=self.class_embed.weight.device).long()
        if labels.dim() == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,) or labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise ValueError(f"labels must be (B,)={batch} ints in [0, "
                             f"{self.config.num_classes}), got {labels.tolist()[:8]}")
        return self.class_embed(labels)[:, None, :]

    def head_outputs(self, x: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm (pre-norm models) and output head: ``(B, n, D)`` -> ``(B, n, 256 | 10K)``.
        Anchored models add the offset head's logit of ``v - anchor`` to each value ``v``
        (``anchors`` ``(B, n)`` long)."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.head(x)
        if anchors is None:
            return logits
        offsets = self.offset_head(x)  # (B, n, 511): offset -255..255 at index 0..510
        index = torch.arange(256, device=x.device) + 255 - anchors[..., None]  # (B, n, 256)
        return logits + offsets.gather(-1, index)

    def context_kv(self, context: torch.Tensor | None) -> list:
        """Each layer's cross-attention keys/values for ``context`` ``(B, Nc, Dc)``, computed once
        per batch (None entries when there is no context). They are made contiguous here: SDPA
        would otherwise copy the transposed ``(B, H, Nc, E)`` views at every decoding step."""
        if context is None:
            return [None] * len(self.layers)
        return [tuple(t.contiguous() for t in layer.context_kv(context)) for layer in self.layers]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None,
                anchors: torch.Tensor | None = None) -> torch.Tensor:
        """Head outputs for every position given all earlier ones, in raster order.

        Args:
            images: ``(B, 3, H, W)`` uint8.
            labels: ``(B,)`` class ids for class-conditional models.
            context: ``(B, Nc, context_dim)`` for models built with ``context_dim``.
            anchors: ``(B, 3, H, W)`` uint8 for models built with ``anchored=True``.

        Returns:
            categorical: logits ``(B, H*W*3, 256)``; DMOL: parameters ``(B, H*W, 10K)``.
        """
        values = self.to_sequence(self.targets(images))  # (B, N) | (B, N, 3), model order
        b, n = values.shape[:2]
        anchor_values = self.anchor_values(anchors, b)  # (B, N) | None
        x = self.input_embeddings(values, self.channel, anchor_values)  # (B, N, D)
        # Shift right by one position (zero start): position t sees values < t only.
        x = nn.functional.pad(x[:, :-1], (0, 0, 1, 0))
        x = x + self.positions()
        if anchor_values is not None:
            x = x + self.anchor_inputs(anchor_values, self.channel)
        cond = self.condition(labels, b)
        if cond is not None:
            x = x + cond
        x = self.dropout(x)
        for layer, context_kv in zip(self.layers, self.context_kv(context)):
            x = layer(x, context_kv)  # (B, N, D)
        return self.to_raster(self.head_outputs(x, anchor_values))

    def nll(self, images: torch.Tensor, labels: torch.Tensor | None = None,
            context: torch.Tensor | None = None,
            anchors: torch.Tensor | None = None) -> torch.Tensor:
        """Exact negative log-likelihood in nats, raster order: ``(B, H*W*3)`` per subpixel
        (categorical) or ``(B, H*W)`` per pixel (DMOL; one pixel = 3 subpixels)."""
        return self.nll_of_outputs(self(images, labels, context, anchors), images)

    def nll_of_outputs(self, outputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """:meth:`nll` from head outputs already computed by ``forward`` (lets a training loop
        call the possibly DDP-wrapped module's ``forward`` and score outside it)."""
        targets = self.targets(images)
        if self.config.likelihood == "cat":
            return categorical_nll(outputs, targets)
        return dmol_nll_per_pixel(outputs, targets)

    def bits_per_dim(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                     context: torch.Tensor | None = None,
                     anchors: torch.Tensor | None = None) -> torch.Tensor:
        """Bits per subpixel of each image, ``(B,)``: total nats / (3*H*W * ln 2)."""
        nats = self.nll(images, labels, context, anchors).sum(dim=1)
        return nats / (3 * self.config.image_size**2 * LN2)
