"""The Image Transformer (Parmar et al. 2018): a decoder-only autoregressive image model.

Sequence layout (Parmar et al. 2018, Sec. 3.1; T2T ``image_transformer.py``): every colour channel
of every pixel is a position, raster order with the channel innermost - r,g,b of pixel (0,0), then
of (0,1), ... - i.e. a grid of H x 3W subpixels. DMOL models use one position per pixel (a grid of
H x W). Local 2D attention runs the whole model in *block-raster* order of that grid (training
shift, loss and sampling alike); inputs and outputs of the public methods are always in raster
order.

The loss and generation belong to the model: ``forward(images, with_loss=True)`` also returns
bits/dim, :meth:`ImageTransformer.generate` samples, and its ``incremental_decoder`` runs the
same embedding, layers and head one position at a time with each layer's KV cache
(:mod:`imgtx.incremental`); :mod:`imgtx.sampling` only chooses values and feeds them back.

Shapes: B batch, H/W image rows/cols, N = number of positions, D model width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from imgtx.attention import (
    Causal,
    Local1D,
    Local2D,
    Pattern,
    block_raster_to_raster,
    raster_to_block_raster,
    set_backend,
)
from imgtx.configs import ImageTransformerConfig
from imgtx.hub import HubModel
from imgtx.incremental import IncrementalDecoder
from imgtx.likelihood import (
    bits_per_dim,
    categorical_nll,
    dmol_nll_per_pixel,
    dmol_shift_means,
    scale_pixels,
)
from imgtx.neighbours import (
    MED_NEIGHBOURS,
    NEIGHBOURS,
    med_of_canvas,
    neighbour_index,
    offset_logits,
)
from imgtx.transformer import LearnedPositions2D, TransformerLayer, sinusoid_positions_2d

__all__ = ["ImageTransformer", "IncrementalDecoder", "LikelihoodOutput", "check_images",
           "pattern_for"]


class LikelihoodOutput(NamedTuple):
    """What ``forward(..., with_loss=True)`` returns: the head ``outputs`` (raster order, as
    without the loss) and each image's exact ``bits_per_dim`` ``(B,)``; the training loss is
    ``bits_per_dim.mean()``."""

    outputs: torch.Tensor
    bits_per_dim: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Mean bits/dim over the batch (a scalar)."""
        return self.bits_per_dim.mean()

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
    ones (and with ``with_loss=True`` each image's bits/dim); :meth:`nll` gives exact negative
    log-likelihoods, :meth:`generate` samples.

    With ``context_dim`` every layer also cross-attends to a ``context`` ``(B, Nc, context_dim)``
    (an encoder's output) passed to ``forward``/``nll``/``bits_per_dim`` and to the decoder: the
    decoder of :class:`imgtx.sr.SuperResolutionTransformer`. Such a decoder is saved as part of its
    encoder-decoder model, not on its own.

    Subclasses may give every position *side information* known before decoding starts (passed
    as ``side`` wherever ``context`` goes) by overriding :meth:`side_values`,
    :meth:`input_embeddings`, :meth:`position_inputs` and :meth:`head_outputs`; training, scoring
    and decoding all go through those four. This base model takes none.

    ``backend`` is the attention backend (see :func:`imgtx.attention.attend`); it is a run-time
    choice, not part of the config: change it with :meth:`set_backend`.
    """

    model_card_tags = ("image-transformer", "autoregressive", "likelihood")
    model_card_description = ("Image Transformer (Parmar et al. 2018), autoregressive over "
                              "subpixels with local self-attention; trained with imgtx.")

    def __init__(self, config: ImageTransformerConfig, context_dim: int | None = None, *,
                 backend: str = "auto") -> None:
        super().__init__(config)
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
        self.neighbours = None
        if c.neighbour_inputs:
            self.neighbours = nn.Linear(3 * len(NEIGHBOURS), d)
            self.register_buffer("neighbour_index", neighbour_index(c), persistent=False)
        # predictor="med": categorical models add logits over the offset from the prediction
        # (zero at initialisation); DMOL models shift their means (dmol_shift_means).
        self.predictor_head = None
        if c.predictor != "none":
            self.register_buffer("med_index", neighbour_index(c, MED_NEIGHBOURS),
                                 persistent=False)
            if c.likelihood == "cat":
                self.predictor_head = nn.Linear(d, 511)
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
                             eps=c.layer_norm_eps, backend=backend, context_dim=context_dim)
            for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.norm == "pre" else None
        # Channel index of every sequence position (categorical embedding offset).
        channel = torch.arange(self.rows * self.cols) % 3
        self.register_buffer("channel", self.to_sequence(channel[None])[0], persistent=False)
        self.reset_parameters()

    def set_backend(self, backend: str) -> ImageTransformer:
        """Compute every attention layer with ``backend`` from now on; returns the model."""
        set_backend(self, backend)
        return self

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
        """T2T initialisation: xavier-uniform with ``config.init_gain`` on every Linear, zero
        biases; embeddings N(0, 1/d), later scaled by sqrt(d)."""
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
        for added in (self.neighbours, self.predictor_head):
            if added is not None:  # zero: adding it to a trained model changes nothing
                nn.init.zeros_(added.weight)
                nn.init.zeros_(added.bias)

    def positions(self) -> torch.Tensor:
        """Position encodings in model order, ``(N, D)``."""
        table = self.learned_positions() if self.config.positions == "learned" else self.sinusoid
        return self.to_sequence(table[None])[0]

    def embed_values(self, values: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """Input embeddings: categorical ``values`` ``(B, n)`` long with their ``channel`` ``(n,)``
        -> ``(B, n, D)``; DMOL ``values`` ``(B, n, 3)`` long pixels -> ``(B, n, D)``."""
        if self.config.likelihood == "cat":
            return self.embed(values + 256 * channel) * math.sqrt(self.config.hidden_size)
        return self.embed(scale_pixels(values, torch.float32))

    def neighbour_embeddings(self, scaled: torch.Tensor, here: slice | None = None) -> torch.Tensor:
        """``neighbour_inputs``: each position's earlier neighbours through one linear layer, from
        ``scaled`` ``(B, N + 1, 3)`` (the pixels decoded so far, model order, in ``[-1, 1]``, zero
        where not decoded and in the last, off-image slot) -> ``(B, n, D)`` at ``here``."""
        index = self.neighbour_index if here is None else self.neighbour_index[here]
        return self.neighbours(scaled[:, index].flatten(2))  # (B, n, 6, 3) -> (B, n, D)

    def canvas_of(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The values in model order ``(B, N)`` or ``(B, N, 3)``, scaled to ``[-1, 1]``, with a
        zero slot appended: ``(B, N + 1[, 3])``, what :meth:`neighbour_embeddings` and
        :meth:`outputs_at` read (the decoder fills one like it as it goes)."""
        scaled = scale_pixels(values, dtype)
        return nn.functional.pad(scaled, (0, 0, 0, 1) if scaled.dim() == 3 else (0, 1))

    def outputs_at(self, x: torch.Tensor, side: torch.Tensor | None, canvas: torch.Tensor | None,
                   here: slice | None = None) -> torch.Tensor:
        """:meth:`head_outputs` of the positions ``here`` (all when None) and, for
        ``predictor='med'``, the median edge prediction from the ``canvas`` of earlier values
        (:meth:`canvas_of`): DMOL means are shifted onto it
        (:func:`imgtx.likelihood.dmol_shift_means`); categorical logits gain the predictor head's
        logits over the offset from it. The likelihood stays exact and normalised."""
        outputs = self.head_outputs(x, side)
        if self.config.predictor == "none":
            return outputs
        centre = med_of_canvas(canvas, self.med_index if here is None else self.med_index[here])
        if self.config.likelihood == "dmol":
            return dmol_shift_means(outputs, centre)
        if self.final_norm is not None:
            x = self.final_norm(x)
        centre = ((centre + 1.0) * 127.5).round().long().clamp(0, 255)  # back to 0..255
        return outputs + offset_logits(self.predictor_head(x), centre)

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
            raise ValueError(f"labels must be (B,)={batch} ints in [0, {self.config.num_classes})"
                             f", got {labels.tolist()[:8]}")
        return self.class_embed(labels)[:, None, :]

    # -- side information: none in this model (class docstring) -------------------------------

    def side_values(self, side, batch: int) -> torch.Tensor | None:
        """``side`` as per-position values in model order ``(B, N, ...)``; None here."""
        if side is not None:
            raise ValueError("this model was built without side inputs; pass side=None")
        return None

    def input_embeddings(self, values: torch.Tensor, channel: torch.Tensor,
                         side: torch.Tensor | None = None) -> torch.Tensor:
        """What a value contributes to the *next* position's input: ``values`` ``(B, n)`` (or
        ``(B, n, 3)``) with their ``channel`` ``(n,)`` and side values -> ``(B, n, D)``."""
        return self.embed_values(values, channel)

    def position_inputs(self, channel: torch.Tensor,
                        side: torch.Tensor | None) -> torch.Tensor | None:
        """What a position's own side value adds to its input, ``(B, n, D)``, or None."""
        return None

    def head_outputs(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm (pre-norm models) and output head: ``(B, n, D)`` -> ``(B, n, 256 | 10K)``."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.head(x)

    # -- forward, likelihood, decoding ---------------------------------------------------------

    def context_kv(self, context: torch.Tensor | None) -> list:
        """Each layer's cross-attention keys/values for ``context`` ``(B, Nc, Dc)``, computed once
        per batch (None entries when there is no context). They are made contiguous here: SDPA
        would otherwise copy the transposed ``(B, H, Nc, E)`` views at every decoding step."""
        if context is None:
            return [None] * len(self.layers)
        return [tuple(t.contiguous() for t in layer.context_kv(context)) for layer in self.layers]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None, side=None, *,
                with_loss: bool = False) -> torch.Tensor | LikelihoodOutput:
        """Head outputs for every position given all earlier ones, raster order; with
        ``with_loss`` also each image's exact bits/dim (the images are their own targets).

        Args:
            images: ``(B, 3, H, W)`` uint8.
            labels: ``(B,)`` class ids for class-conditional models.
            context: ``(B, Nc, context_dim)`` for models built with ``context_dim``.
            side: side information, for subclasses that take it.
            with_loss: also score the images (a :class:`LikelihoodOutput`).

        Returns:
            categorical: logits ``(B, H*W*3, 256)``; DMOL: parameters ``(B, H*W, 10K)``; with
            ``with_loss``, ``LikelihoodOutput(outputs, bits_per_dim (B,))``.
        """
        values = self.to_sequence(self.targets(images))  # (B, N) | (B, N, 3), model order
        b = values.shape[0]
        side = self.side_values(side, b)
        x = self.input_embeddings(values, self.channel, side)  # (B, N, D)
        # Shift right by one position (zero start): position t sees values < t only.
        x = nn.functional.pad(x[:, :-1], (0, 0, 1, 0))
        x = x + self.positions()
        canvas = None
        if self.config.neighbour_inputs or self.config.predictor != "none":
            canvas = self.canvas_of(values, x.dtype)
        if self.neighbours is not None:
            x = x + self.neighbour_embeddings(canvas)
        for extra in (self.position_inputs(self.channel, side), self.condition(labels, b)):
            if extra is not None:  # a position's own side value; the class embedding
                x = x + extra
        x = self.dropout(x)
        for layer, context_kv in zip(self.layers, self.context_kv(context)):
            x = layer(x, context_kv)  # (B, N, D)
        outputs = self.to_raster(self.outputs_at(x, side, canvas))
        if not with_loss:
            return outputs
        return LikelihoodOutput(outputs, self.bits_of_nll(self.nll_of_outputs(outputs, images)))

    def nll(self, images: torch.Tensor, labels: torch.Tensor | None = None,
            context: torch.Tensor | None = None, side=None) -> torch.Tensor:
        """Exact negative log-likelihood in nats, raster order: ``(B, H*W*3)`` per subpixel
        (categorical) or ``(B, H*W)`` per pixel (DMOL; one pixel = 3 subpixels)."""
        return self.nll_of_outputs(self(images, labels, context, side), images)

    def nll_of_outputs(self, outputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """:meth:`nll` from head outputs already computed by ``forward`` (lets a training loop
        call the possibly DDP-wrapped module's ``forward`` and score outside it)."""
        targets = self.targets(images)
        if self.config.likelihood == "cat":
            return categorical_nll(outputs, targets)
        return dmol_nll_per_pixel(outputs, targets)

    def bits_of_nll(self, nats: torch.Tensor) -> torch.Tensor:
        """Per-position nats ``(B, positions)`` -> each image's bits/dim ``(B,)``."""
        return bits_per_dim(nats.sum(dim=1), 3 * self.config.image_size**2)

    def bits_per_dim(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                     context: torch.Tensor | None = None, side=None) -> torch.Tensor:
        """Bits per subpixel of each image, ``(B,)``."""
        return self(images, labels, context, side, with_loss=True).bits_per_dim

    @torch.no_grad()
    def generate(self, num_images: int, labels: torch.Tensor | int | None = None, *,
                 temperature: float = 1.0, seed: int | None = None, batch_size: int = 16,
                 policy=None, use_cache: bool = True, progress: bool = False) -> torch.Tensor:
        """``num_images`` samples ``(num_images, 3, H, W)`` uint8, ``batch_size`` at a time
        (:func:`imgtx.sampling.decode`). ``labels``: one class id or ``(num_images,)`` ids
        (class-conditional models); ``temperature``: 0 takes the most likely values; ``seed``
        makes the draws reproducible; ``policy`` (:mod:`imgtx.sampling`) replaces the draws."""
        from imgtx.sampling import decode, draws

        device = next(self.parameters()).device
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        if policy is None:
            policy = draws(self, temperature, generator)
        if labels is not None:
            labels = torch.as_tensor(labels, device=device).long()
            if labels.dim() == 0:
                labels = labels.expand(num_images)
        chunks = []
        starts = range(0, num_images, batch_size)
        for start in tqdm(starts, desc="batches", disable=not progress or len(starts) == 1):
            count = min(batch_size, num_images - start)
            chunk_labels = None if labels is None else labels[start : start + count]
            chunks.append(decode(self, count, labels=chunk_labels, use_cache=use_cache,
                                 policy=policy, progress=progress))
        return torch.cat(chunks)

    def incremental_decoder(self, batch: int, *, labels: torch.Tensor | None = None,
                            context: torch.Tensor | None = None, side=None, fused: bool = True,
                            compile: bool = False) -> IncrementalDecoder:
        """A :class:`IncrementalDecoder` for ``batch`` sequences (same arguments as forward;
        ``fused``/``compile``: see :class:`IncrementalDecoder`)."""
        return IncrementalDecoder(self, batch, labels=labels, context=context, side=side,
                                  fused=fused, compile=compile)
