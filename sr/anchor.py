"""Anchored super-resolution decoders (``SuperResolutionConfig.anchor``; an imgtx extension, off
in the paper configs).

The decoder gets a fixed upscale of the input (PIL bicubic, or nearest) as every output subpixel's
*anchor* ``a``: a guess of its value known before decoding starts. This is residual learning over
bicubic (as in VDSR, Kim et al. 2016) in likelihood form. The anchor enters twice:

* inputs: position t adds an embedding of its own anchor ``a_t`` and of the previous subpixel's
  residual ``x_{t-1} - a_{t-1}`` (both functions of known values, so causality holds);
* output: ``logits[v] = head(h)[v] + offset_head(h)[v - a_t + 255]``, a 511-way table over the
  offset from the anchor added to the usual 256-way one. The softmax is still over the 256
  values, so the likelihood stays an exact categorical.

"Stay near the interpolation" then need not be learned through cross-attention, which a CPU-sized
model did not manage within its training budget (docs/super_resolution.md).

A DMOL decoder (``likelihood="dmol"``, :class:`AnchoredPixelDecoder`) takes the anchors of the
3x3 pixels around each position as inputs instead (anchors of later pixels are known too); its
means stay relative to its own predictor, and the network learns how far to trust the anchor.
The models trained so far hardly use this input (docs/benchmarks.md); the shipped one is
conditioned through its block means (:mod:`imgtx.sr.blockmean`) and the anchors at temperature 0.

Decoding at temperature 0 (:class:`StayNearAnchor`): plain argmax decoding drifts - once one
subpixel leaves its anchor, the residual input tells the next position that the image is off, and
the error runs along a row (streaks). The rule keeps each subpixel at its anchor unless the model
is confident of another value. It only chooses among values; the likelihood (bits/dim) is not
touched.

Shapes: B batch, h/w input rows/cols, H/W output rows/cols, n positions, D model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imgtx.configs import ImageTransformerConfig
from imgtx.likelihood import (
    discretized_logistic_log_mass,
    discretized_logistic_log_prob,
    dmol_conditional_means,
    dmol_split_params,
    scale_pixels,
    standardized_interval_edges,
)
from imgtx.model import ImageTransformer
from imgtx.neighbours import decoding_order, offset_logits
from imgtx.resample import upscale_bicubic, upscale_nearest
from imgtx.sampling import each_row
from imgtx.sr.blockmean import back_project
from imgtx.sr.configs import SuperResolutionConfig

__all__ = ["AnchoredDecoder", "AnchoredPixelDecoder", "StayNearAnchor", "AnchorPolicy",
           "make_anchors", "anchor_window_index", "DEFAULT_OFFSET_SCALE"]

DEFAULT_OFFSET_SCALE = 8.0  # Laplace scale of a fresh anchored model's offset prior, in levels


def make_anchors(low_res: torch.Tensor, config: SuperResolutionConfig) -> torch.Tensor | None:
    """The decoder's anchors for an input: its ``config.anchor`` upscale, ``(B, 3, h, w)`` ->
    ``(B, 3, H, W)`` uint8 on ``low_res``'s device, or None for ``anchor="none"``. Bicubic is
    PIL's, the same resampler as the ``bicubic_psnr`` baseline of ``imgtx sr eval``. With
    ``config.block_means`` the upscale is then back-projected onto the input's block means
    (:func:`imgtx.sr.blockmean.back_project`)."""
    if config.anchor == "none":
        return None
    upscale = upscale_bicubic if config.anchor == "bicubic" else upscale_nearest
    anchors = upscale(low_res.to(torch.uint8).cpu(), config.scale).to(low_res.device)
    if config.block_means:  # anchors that downscale to the input, as every output then does
        anchors = back_project(anchors, low_res, config.scale, config.area_rounding)
    return anchors


def _anchor_sequence(model: ImageTransformer, side: torch.Tensor | None,
                     batch: int) -> torch.Tensor:
    """The anchor image ``side`` ``(B, 3, H, W)`` uint8 as the model's targets in model order:
    ``(B, N)`` subpixels or ``(B, N, 3)`` pixels, long."""
    if side is None:
        raise ValueError("this decoder is anchored: pass anchors (B, 3, H, W) uint8 as side=, "
                         "e.g. the bicubic upscale of the low-resolution input")
    values = model.to_sequence(model.targets(side))
    if values.shape[0] != batch:
        raise ValueError(f"anchors have batch {values.shape[0]}, expected {batch}")
    return values


@dataclass(frozen=True)
class StayNearAnchor:
    """Temperature-0 decoding rule of an anchored decoder: take the anchor ``a`` unless the
    model's most likely value ``m`` has probability above ``min_prob`` *and* beats the anchor's
    probability by more than ``margin``; then take ``m``.

    ``min_prob=1`` (or ``margin=1``) always returns the anchors (the bicubic upscale);
    ``min_prob=0, margin=0`` is plain argmax, ties going to the anchor. The defaults are
    conservative: on ``builtin:photos32``'s test split, ``checkpoints/sr-photos-8to32-small``'s
    departures from the anchor did not raise PSNR at any setting tried, and plain argmax lost
    1.7 dB to drift (docs/sampling.md). :meth:`policy` makes it a decoding policy for
    :func:`imgtx.sampling.decode` (the upscale functions do so at temperature 0 by default for
    anchored models).
    """

    min_prob: float = 0.9
    margin: float = 0.6

    def __post_init__(self) -> None:
        for name in ("min_prob", "margin"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"StayNearAnchor.{name} must be in [0, 1], got {value}")

    def __call__(self, outputs: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Categorical: ``outputs`` logits ``(B, 256)`` at one position and its anchors ``(B,)``
        long -> ``(B,)``. DMOL: ``outputs`` ``(B, 10K)`` and the anchor pixels ``(B, 3)``, or
        the position's side values ``(B, 9, 3)`` from :class:`AnchoredPixelDecoder` (its own
        anchor first) -> pixels ``(B, 3)``."""
        if anchors.dim() == 1:
            probs = torch.softmax(outputs.float(), dim=-1)
            best_prob, best = probs.max(dim=-1)
            anchor_prob = probs.gather(-1, anchors[:, None])[:, 0]
            return torch.where(self.leaves(best_prob, anchor_prob), best, anchors)
        return self.choose_pixel(outputs, anchors[:, 0] if anchors.dim() == 3 else anchors)

    def policy(self, anchors: torch.Tensor) -> AnchorPolicy:
        """This rule as a decoding policy, given the decoder's per-position side values in model
        order (``decoder.side_values(anchor_image, batch)``)."""
        return AnchorPolicy(self, anchors)

    def leaves(self, best_prob: torch.Tensor, anchor_prob: torch.Tensor) -> torch.Tensor:
        """Where the most likely value (probability ``best_prob``) replaces the anchor."""
        return (best_prob > self.min_prob) & (best_prob - anchor_prob > self.margin)

    def choose_pixel(self, params: torch.Tensor, anchors: torch.Tensor,
                     lo: torch.Tensor | None = None,
                     hi: torch.Tensor | None = None) -> torch.Tensor:
        """The rule on a DMOL head, one channel at a time (r, then g given the chosen r, then b):
        ``params`` ``(M, 10K)`` and anchor pixels ``(M, 3)`` long -> ``(M, 3)`` long. ``lo``,
        ``hi`` ``(M, 3)``: restrict each channel to ``lo..hi``, the distribution truncated there
        and renormalised, the anchor clamped into it (:mod:`imgtx.sr.blockmean`); None: 0..255.

        A channel's distribution is the mixture with weights updated by the channels already
        chosen (as in :func:`imgtx.likelihood.dmol_nll_per_channel`). Its most likely value is
        searched among the bins of the components' medians: a value of mixture probability above
        1/2 has probability above 1/2 under some (truncated) component, so its bin holds that
        component's median (the mean when nothing is truncated; edge bins 0 and 255 hold the
        tails beyond 0.5 and 254.5). For ``min_prob >= 0.5`` this finds every value the rule may
        take, exactly, at K + 1 evaluations instead of 256."""
        if self.min_prob < 0.5:
            raise ValueError(f"a DMOL model's StayNearAnchor needs min_prob >= 0.5, got "
                             f"{self.min_prob}")
        bounded = lo is not None
        if bounded:
            anchors = torch.minimum(torch.maximum(anchors, lo), hi)
        else:
            lo, hi = torch.zeros_like(anchors), torch.full_like(anchors, 255)
        p = dmol_split_params(params)  # means/log_scales/coeffs (M, K, 3)
        log_weights = torch.log_softmax(p.logits, dim=-1)  # (M, K)
        chosen = []
        scaled = torch.zeros(len(anchors), 3, dtype=p.means.dtype, device=anchors.device)
        for c in range(3):
            mean = dmol_conditional_means(p, scaled)[..., c]  # (M, K): reads channels < c
            low, high, log_scale = lo[:, c, None], hi[:, c, None], p.log_scales[..., c]
            medians = _truncated_median_bin(mean, log_scale, low, high)  # (M, K)
            candidates = torch.cat([anchors[:, c : c + 1], medians], dim=1)  # (M, K + 1)
            log_probs = discretized_logistic_log_prob(  # (M, K, K + 1)
                scale_pixels(candidates, mean.dtype)[:, None, :], mean[..., None],
                log_scale[..., None])
            log_probs_mixture = torch.logsumexp(log_weights[..., None] + log_probs, dim=1)
            if bounded:  # renormalise by the mixture's mass on lo..hi
                log_probs_mixture = log_probs_mixture - torch.logsumexp(
                    log_weights + discretized_logistic_log_mass(low, high, mean, log_scale),
                    dim=1, keepdim=True)
            probs = log_probs_mixture.exp()  # (M, K + 1)
            best_prob, best = probs.max(dim=-1)
            value = torch.where(self.leaves(best_prob, probs[:, 0]),
                                candidates.gather(1, best[:, None])[:, 0], anchors[:, c])
            chosen.append(value)
            scaled[:, c] = scale_pixels(value, mean.dtype)
            # The posterior over components given the channels chosen so far.
            taken = (candidates == value[:, None]).float().argmax(dim=1)  # a column holding it
            index = taken[:, None, None].expand(-1, log_probs.shape[1], 1)
            log_weights = torch.log_softmax(log_weights + log_probs.gather(2, index)[..., 0], -1)
        return torch.stack(chosen, dim=-1)


@dataclass
class AnchorPolicy:
    """:class:`StayNearAnchor` as a decoding policy (:mod:`imgtx.sampling`): ``anchors`` are the
    decoder's side values in model order, ``(B, N)`` (categorical) or ``(B, N, 9, 3)`` (DMOL)."""

    rule: StayNearAnchor
    anchors: torch.Tensor

    def choose(self, outputs: torch.Tensor, position) -> torch.Tensor:
        """``(b, n, 256 | 10K)`` at ``position`` -> ``(b, n)`` | ``(b, n, 3)`` long."""
        anchors = self.anchors if position.rows is None else self.anchors[position.rows]
        return each_row(self.rule, outputs, anchors[:, position.index])


def _truncated_median_bin(mean: torch.Tensor, log_scale: torch.Tensor, lo: torch.Tensor,
                          hi: torch.Tensor) -> torch.Tensor:
    """The bin (0..255, inside ``lo..hi``) of the median of a logistic truncated to the bins
    ``lo..hi`` (edge bins open-ended): ``mean + scale * logit((F(lower) + F(upper)) / 2)``,
    with F the logistic's CDF at the interval's outer bin edges."""
    lower, upper = standardized_interval_edges(lo, hi, mean, log_scale)
    # Mirror an interval right of the mean to its left, where the CDF values are small and exact.
    flip = lower > 0
    lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_q = torch.logaddexp(F.logsigmoid(lower), F.logsigmoid(upper)) + math.log(0.5)
    logit = log_q - torch.log1p(-log_q.exp())
    median = mean + torch.exp(log_scale) * torch.where(flip, -logit, logit)
    bins = ((median + 1.0) * 127.5).round().nan_to_num(0.0)
    return torch.minimum(torch.maximum(bins, lo.to(bins.dtype)), hi.to(bins.dtype)).long()


class AnchoredDecoder(ImageTransformer):
    """An Image Transformer decoder whose side information is the anchor image.

    ``side`` (in ``forward``/``nll``/``bits_per_dim`` and :func:`imgtx.sampling.decode`) is the
    anchor image ``(B, 3, H, W)`` uint8, e.g. :func:`make_anchors` of the input. Categorical
    likelihood only. A fresh model predicts a discrete Laplace around the anchor whatever its
    hidden state: the value head starts at zero and the offset head at a prior
    (:meth:`set_offset_prior`), so temperature 0 returns the anchors until trained.
    """

    def __init__(self, config: ImageTransformerConfig, context_dim: int | None = None, *,
                 backend: str = "auto") -> None:
        if config.likelihood != "cat":
            raise ValueError("an anchored decoder needs the categorical likelihood, got "
                             f"likelihood={config.likelihood!r}")
        super().__init__(config, context_dim, backend=backend)
        d = config.hidden_size
        self.anchor_embed = nn.Embedding(256 * 3, d)  # a_t + 256*channel
        self.residual_embed = nn.Embedding(511 * 3, d)  # x - a + 255 + 511*channel
        self.offset_head = nn.Linear(d, 511)  # logit of offset v - a, at index v - a + 255
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Image Transformer's initialisation, then a zero value head and the default
        offset prior."""
        super().reset_parameters()
        if not hasattr(self, "offset_head"):  # called by ImageTransformer.__init__: not built yet
            return
        d = self.config.hidden_size
        nn.init.normal_(self.anchor_embed.weight, std=d**-0.5)
        nn.init.normal_(self.residual_embed.weight, std=d**-0.5)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.offset_head.weight)
        self.set_offset_prior(-torch.arange(-255, 256).abs().float() / DEFAULT_OFFSET_SCALE)

    @torch.no_grad()
    def set_offset_prior(self, log_probs: torch.Tensor) -> None:
        """Set the offset head's bias to ``log_probs`` ``(511,)`` over offsets -255..255 (e.g.
        the log histogram of ``target - anchor`` on training data), normalised. Initialising an
        output bias to the log marginal is the usual way to start a classifier calibrated."""
        log_probs = torch.as_tensor(log_probs, dtype=torch.float32)
        if log_probs.shape != (511,) or not torch.isfinite(log_probs).all():
            raise ValueError(f"expected 511 finite log-probabilities, got {tuple(log_probs.shape)}")
        self.offset_head.bias.copy_(torch.log_softmax(log_probs, dim=0))

    # -- the side-information hooks of ImageTransformer ----------------------------------------

    def side_values(self, side: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Model-order anchor subpixels ``(B, N)`` long of the anchor image ``side``
        ``(B, 3, H, W)`` uint8."""
        return _anchor_sequence(self, side, batch)

    def input_embeddings(self, values: torch.Tensor, channel: torch.Tensor,
                         side: torch.Tensor | None = None) -> torch.Tensor:
        """The value's embedding plus that of its residual from its own anchor ``side``
        ``(B, n)`` long: ``(B, n)`` -> ``(B, n, D)``."""
        x = self.embed_values(values, channel)
        offsets = values - side + 255 + 511 * channel
        return x + self.residual_embed(offsets) * math.sqrt(self.config.hidden_size)

    def position_inputs(self, channel: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """The embedding of each position's own anchor: ``(B, n)`` -> ``(B, n, D)``."""
        return self.anchor_embed(side + 256 * channel) * math.sqrt(self.config.hidden_size)

    def head_outputs(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Value logits plus the offset head's logit of ``v - anchor`` for each value ``v``:
        ``(B, n, D)`` with anchors ``side`` ``(B, n)`` -> ``(B, n, 256)``."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.head(x) + offset_logits(self.offset_head(x), side)


def anchor_window_index(config: ImageTransformerConfig) -> torch.Tensor:
    """``(N, 9)`` model-order index of the 3x3 pixels around each position of a DMOL decoder,
    its own first, then rows above to below; off-image neighbours repeat the nearest edge
    pixel."""
    rows, cols = config.sequence_grid
    raster, order = decoding_order(config)
    r, c = raster // cols, raster % cols
    offsets = [(0, 0)] + [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
    return torch.stack([order[(r + dr).clamp(0, rows - 1) * cols + (c + dc).clamp(0, cols - 1)]
                        for dr, dc in offsets], dim=1)


class AnchoredPixelDecoder(ImageTransformer):
    """A DMOL Image Transformer decoder whose side information is the anchor image.

    ``side`` is the anchor image ``(B, 3, H, W)`` uint8, as for :class:`AnchoredDecoder`. Each
    position adds a linear map of the anchors of the 3x3 pixels around it (scaled to [-1, 1]);
    the map starts at zero, so a decoder warm-started from an unconditional model begins as that
    model. At temperature 0 :class:`StayNearAnchor` compares with the position's own anchor.
    """

    def __init__(self, config: ImageTransformerConfig, context_dim: int | None = None, *,
                 backend: str = "auto") -> None:
        if config.likelihood != "dmol":
            raise ValueError("AnchoredPixelDecoder needs the DMOL likelihood, got "
                             f"likelihood={config.likelihood!r}")
        super().__init__(config, context_dim, backend=backend)
        self.register_buffer("anchor_index", anchor_window_index(config), persistent=False)
        self.anchor_inputs = nn.Linear(9 * 3, config.hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Image Transformer's initialisation, then a zero anchor map."""
        super().reset_parameters()
        if hasattr(self, "anchor_inputs"):  # not yet built when ImageTransformer.__init__ calls
            nn.init.zeros_(self.anchor_inputs.weight)
            nn.init.zeros_(self.anchor_inputs.bias)

    def side_values(self, side: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The anchors around every position, model order: ``(B, N, 9, 3)`` long (own first)."""
        return _anchor_sequence(self, side, batch)[:, self.anchor_index]  # (B, N, 3) -> 9

    def position_inputs(self, channel: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """``(B, n, 9, 3)`` anchors -> ``(B, n, D)``."""
        return self.anchor_inputs(scale_pixels(side, self.anchor_inputs.weight.dtype).flatten(2))
