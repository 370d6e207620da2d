"""The discretized logistic of PixelCNN++ (Salimans et al. 2017, Sec. 2.1-2.2; tensor2tensor
``common_layers.discretized_mix_logistic_loss``): one value 0..255 is the bin of width 2/255
around ``v / 127.5 - 1`` on [-1, 1], the two edge bins open-ended. :mod:`imgtx.likelihood` mixes
these per channel (the DMOL head); super-resolution truncates them to intervals of values
(:mod:`imgtx.sr.blockmean`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NUM_VALUES", "HALF_BIN", "EDGE", "TINY_BIN_PROB", "scale_pixels",
           "discretized_logistic_log_prob", "standardized_interval_edges",
           "discretized_logistic_log_mass", "logistic_bin_probs"]

NUM_VALUES = 256  # values per subpixel
HALF_BIN = 1.0 / 255.0  # half the bin width after scaling [0, 255] to [-1, 1]
EDGE = 0.999  # scaled values beyond +-EDGE are the open-ended edge bins (values 0 and 255)
# Below this bin probability PixelCNN++ switches to "pdf at the bin centre times the bin width";
# kept so that reported bits/dim match published numbers.
TINY_BIN_PROB = 1e-5


def scale_pixels(pixels: Tensor, dtype: torch.dtype) -> Tensor:
    """Values 0..255 -> [-1, 1] by ``v / 127.5 - 1``."""
    return pixels.to(dtype) / 127.5 - 1.0



def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-probability of the bin of scaled value ``x`` under a discretized logistic.

    The bin of ``x`` is ``[x - 1/255, x + 1/255]``; value 0 (``x < -0.999``) owns everything below
    its upper edge and value 255 (``x > 0.999``) everything above its lower edge, so the 256 bins
    cover the real line. Where a bin's probability is below 1e-5 PixelCNN++ replaces it by the
    density at the bin centre times the bin width (``log_pdf - log 127.5``); we keep that so numbers
    match published ones, at the price of the pmf not summing to exactly 1 when such bins occur.

    Args:
        x: scaled values in ``[-1, 1]`` (exactly ``v / 127.5 - 1``), broadcastable with the rest.
        mean: logistic location.
        log_scale: logistic log-scale (already clamped).

    Returns:
        Broadcast shape of the inputs, log-probabilities in nats.
    """
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    plus_in = inv_scale * (centered + HALF_BIN)
    min_in = inv_scale * (centered - HALF_BIN)
    mid_in = inv_scale * centered
    log_cdf_plus = F.logsigmoid(plus_in)  # edge bin of value 0
    log_one_minus_cdf_min = F.logsigmoid(-min_in)  # edge bin of value 255
    # sigmoid(a) - sigmoid(b) == sigmoid(-b) - sigmoid(-a): take the side where both terms are
    # small, which avoids cancellation between two numbers close to 1 (same value mathematically
    # as the PixelCNN++ form, fewer rounding errors in float32).
    right_of_mean = mid_in > 0
    upper = torch.where(right_of_mean, -min_in, plus_in)
    lower = torch.where(right_of_mean, -plus_in, min_in)
    cdf_delta = torch.sigmoid(upper) - torch.sigmoid(lower)
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)
    log_prob_mid = torch.where(
        cdf_delta > TINY_BIN_PROB,
        torch.log(cdf_delta.clamp(min=1e-12)),
        log_pdf_mid - math.log(127.5),  # density times the bin width 2/255
    )
    return torch.where(
        x < -EDGE, log_cdf_plus, torch.where(x > EDGE, log_one_minus_cdf_min, log_prob_mid)
    )


def standardized_interval_edges(lo: Tensor, hi: Tensor, mean: Tensor,
                                log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The outer bin edges of the values ``lo..hi`` (integers 0..255) in a logistic's standard
    units, ``(edge - mean) / scale``: ``(lower, upper)``, with -inf / +inf at the open-ended
    edge bins of 0 and 255 (as in :func:`discretized_logistic_log_prob`)."""
    inv_scale = torch.exp(-log_scale)
    upper = torch.where(hi >= NUM_VALUES - 1, torch.inf,
                        inv_scale * (scale_pixels(hi, mean.dtype) + HALF_BIN - mean))
    lower = torch.where(lo <= 0, -torch.inf,
                        inv_scale * (scale_pixels(lo, mean.dtype) - HALF_BIN - mean))
    return lower, upper


def discretized_logistic_log_mass(lo: Tensor, hi: Tensor, mean: Tensor, log_scale: Tensor,
                                  exact_width: int = 16) -> Tensor:
    """Log-probability that a discretized logistic takes a value in ``lo..hi`` (integers 0..255,
    ``lo <= hi``; broadcastable with the rest); 0 for the whole range ``0..255``.

    Intervals of at most ``exact_width`` values sum :func:`discretized_logistic_log_prob` over
    their bins, so that the pmf truncated to them sums to exactly 1 even where PixelCNN++'s
    tiny-bin substitution applies (intervals far in a tail). Wider ones take the logistic's mass
    between the interval's outer bin edges (edge bins of 0 and 255 open-ended), which ignores
    that substitution (below 1e-5 per bin)."""
    lower, upper = standardized_interval_edges(lo, hi, mean, log_scale)
    # mass = sigmoid(upper) - sigmoid(lower); right of the mean use sigmoid(-lower) -
    # sigmoid(-upper) instead, so that both terms are small (no cancellation near 1).
    right = lower > 0
    big, small = torch.where(right, -lower, upper), torch.where(right, -upper, lower)
    log_big = F.logsigmoid(big)
    ratio = torch.exp(F.logsigmoid(small) - log_big).clamp(max=1.0 - 1e-7)
    between_edges = log_big + torch.log1p(-ratio)
    if exact_width < 1:
        return between_edges
    offsets = torch.arange(exact_width, device=mean.device)
    values = lo[..., None] + offsets  # (..., W) the interval's first values
    bins = discretized_logistic_log_prob(scale_pixels(values.clamp(max=NUM_VALUES - 1),
                                                      mean.dtype), mean[..., None],
                                         log_scale[..., None])
    summed = torch.logsumexp(bins.masked_fill(values > hi[..., None], -torch.inf), dim=-1)
    return torch.where(hi - lo < exact_width, summed, between_edges)


_EDGES = (scale_pixels(torch.arange(1, NUM_VALUES), torch.float64) - HALF_BIN)  # (255,) bin edges


def logistic_bin_probs(mean: Tensor, log_scale: Tensor) -> Tensor:
    """All 256 bin probabilities of a discretized logistic, ``(..., 256)`` from ``mean`` and
    ``log_scale`` ``(...)`` (float64): the bins of :func:`discretized_logistic_log_prob`
    (open-ended edge bins; PixelCNN++'s density-times-width for inner bins whose mass is below
    1e-5), from one sigmoid per bin edge instead of that function's eight transcendental passes
    per value. The lossless codec codes with these (``imgtx.codec``)."""
    inv_scale = torch.exp(-log_scale)[..., None]  # (..., 1)
    standard = (_EDGES - mean[..., None]).mul_(inv_scale)  # (..., 255) edges, standardised
    cdf = torch.sigmoid(standard)  # (..., 255)
    upper_tail = torch.sigmoid(-standard[..., -1])  # mass of value 255, without cancellation
    inner = cdf[..., 1:] - cdf[..., :-1]  # (..., 254) values 1..254
    # Below 1e-5, the density at the bin centre times the bin width 2/255 (PixelCNN++):
    # inv_scale * e / (1 + e)^2 * 2/255 with e = exp(-|centre|), centre = edge + half a bin.
    e = standard[..., :-1].add_(inv_scale * HALF_BIN).abs_().neg_().exp_()  # (..., 254)
    density = e.div_((e + 1.0).square_()).mul_(inv_scale * (2.0 * HALF_BIN))
    inner = torch.where(inner > TINY_BIN_PROB, inner, density)
    return torch.cat([cdf[..., :1], inner, upper_tail[..., None]], dim=-1)
