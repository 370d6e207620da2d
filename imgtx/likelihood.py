"""Output distributions of the Image Transformer: categorical and DMOL.

Two heads (Parmar et al. 2018, Sec. 3.1; T2T ``image_transformer.py``, ``modalities.py``):

* **Categorical.** One position per subpixel; a 256-way softmax over the subpixel's value.
  ``categorical_nll`` gives nats per subpixel.
* **DMOL**, the discretized mixture of logistics of PixelCNN++ (Salimans et al. 2017, §2.1-2.2;
  tensor2tensor ``common_layers.discretized_mix_logistic_loss``). One position per pixel; the three
  channels share one mixture, so the likelihood is only defined per pixel. ``dmol_nll_per_pixel``
  gives nats per pixel; divide by 3 to report nats (or bits) per subpixel.

DMOL parameter layout
---------------------
The last axis of ``params`` holds ``10 * K`` numbers for ``K`` mixtures (``K = 10`` gives the
100 numbers of the paper). It is split in this order, the same as T2T
``split_to_discretized_mix_logistic_params`` so that T2T checkpoints map one to one::

    [ logits (K) | means (K, 3) | log_scales (K, 3) | coeffs (K, 3) ]

Each ``(K, 3)`` block is mixture-major: entry ``k * 3 + c`` belongs to mixture ``k``, channel
``c`` (r=0, g=1, b=2). Log-scales are clamped at ``>= -7``; coefficients pass through ``tanh``.
Within mixture ``k`` the channel means are autoregressive in the pixel's own values ``x`` (scaled to
``[-1, 1]`` by ``v / 127.5 - 1``)::

    mean_r = means[k, 0]
    mean_g = means[k, 1] + coeffs[k, 0] * x_r
    mean_b = means[k, 2] + coeffs[k, 1] * x_r + coeffs[k, 2] * x_g

Shape names: ``...`` is any batch shape (e.g. ``B, H, W``), ``K`` the number of mixtures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# The discretized logistic itself; imported here, where callers have always found it.
from imgtx.logistic import (  # noqa: F401
    EDGE,
    HALF_BIN,
    NUM_VALUES,
    TINY_BIN_PROB,
    discretized_logistic_log_mass,
    discretized_logistic_log_prob,
    scale_pixels,
    standardized_interval_edges,
)

PARAMS_PER_MIXTURE = 10  # 1 logit + 3 means + 3 log-scales + 3 coefficients
MIN_LOG_SCALE = -7.0  # PixelCNN++ / T2T clamp


# ----------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------


def bits_per_dim(nats: float | Tensor, num_subpixels: int) -> float | Tensor:
    """Bits per dimension (subpixel) of a summed negative log-likelihood: the one place where
    nats become bits/dim; every model, loss and evaluation goes through it.

    Args:
        nats: total NLL in nats over ``num_subpixels`` subpixels, a float or a tensor of such
            sums of any shape (e.g. ``(B,)`` per image; for DMOL, sums of per-pixel NLLs, each
            pixel counting as 3 subpixels).
        num_subpixels: number of subpixels each sum covers, e.g. ``3 * H * W`` per image.

    Returns:
        ``nats / (num_subpixels * ln 2)``, a float for a float.
    """
    if num_subpixels <= 0:
        raise ValueError(f"num_subpixels must be positive, got {num_subpixels}")
    if not isinstance(nats, Tensor):
        nats = float(nats)
    return nats / (num_subpixels * math.log(2.0))


def nats_to_bits(nats: float | Tensor) -> float | Tensor:
    """Convert nats to bits. Works on floats and tensors of any shape."""
    return bits_per_dim(nats, 1)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# Categorical head
# ----------------------------------------------------------------------------------------------


def categorical_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Negative log-likelihood in nats of each subpixel under a 256-way softmax.

    Args:
        logits: ``(..., 256)`` float (any precision; the log-softmax runs in float32, or float64
            when the logits are float64).
        targets: ``(...)`` integer values in ``[0, 255]``.

    Returns:
        ``(...)`` nats per subpixel, no reduction; :func:`bits_per_dim` of their sum over
        the subpixels is bits/dim.
    """
    if logits.shape[-1] != NUM_VALUES:
        raise ValueError(
            f"categorical_nll expects logits of shape (..., {NUM_VALUES}), got "
            f"{tuple(logits.shape)}"
        )
    if tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal logits shape without its last axis "
            f"{tuple(logits.shape[:-1])}"
        )
    log_probs = F.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)  # (..., 256)
    return -log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (...)


# ----------------------------------------------------------------------------------------------
# DMOL head
# ----------------------------------------------------------------------------------------------


@dataclass
class DMOLParams:
    """DMOL parameters split out of the flat ``(..., 10K)`` layout (see the module docstring).

    Attributes:
        logits: ``(..., K)`` unnormalised mixture logits.
        means: ``(..., K, 3)`` channel locations before the autoregressive shift.
        log_scales: ``(..., K, 3)`` clamped at ``>= -7``.
        coeffs: ``(..., K, 3)`` in ``(-1, 1)`` (after tanh): (g<-r, b<-r, b<-g).
    """

    logits: Tensor
    means: Tensor
    log_scales: Tensor
    coeffs: Tensor

    @property
    def num_mixtures(self) -> int:
        """Number of mixture components ``K``."""
        return self.logits.shape[-1]


def dmol_split_params(params: Tensor) -> DMOLParams:
    """Split ``(..., 10K)`` DMOL outputs into their parts, in float32 (float64 kept).

    Args:
        params: ``(..., 10K)`` raw network outputs.

    Returns:
        ``DMOLParams`` with the clamp on log-scales and the tanh on coefficients applied.
    """
    size = params.shape[-1]
    if size == 0 or size % PARAMS_PER_MIXTURE != 0:
        raise ValueError(
            f"DMOL params must have a last axis of 10 * num_mixtures (100 for 10 mixtures), "
            f"got {size}"
        )
    k = size // PARAMS_PER_MIXTURE
    params = params.to(_compute_dtype(params))
    logits, means, log_scales, coeffs = params.split([k, 3 * k, 3 * k, 3 * k], dim=-1)
    mixture_shape = (*params.shape[:-1], k, 3)
    return DMOLParams(
        logits=logits,  # (..., K)
        means=means.reshape(mixture_shape),  # (..., K, 3)
        log_scales=log_scales.reshape(mixture_shape).clamp(min=MIN_LOG_SCALE),  # (..., K, 3)
        coeffs=torch.tanh(coeffs.reshape(mixture_shape)),  # (..., K, 3)
    )


def dmol_shift_means(params: Tensor, base: Tensor) -> Tensor:
    """Re-centre DMOL outputs on a per-pixel guess: the channel means become ``base`` plus the
    network's means, with the autoregressive coefficients acting on the residuals ``x - base``::

        mean_r = base_r + means[k, 0]
        mean_g = base_g + means[k, 1] + coeffs[k, 0] * (x_r - base_r)
        mean_b = base_b + means[k, 2] + coeffs[k, 1] * (x_r - base_r)
                                      + coeffs[k, 2] * (x_g - base_g)

    ``base`` depends only on earlier pixels, so this is the same DMOL family in new coordinates
    (likelihoods stay exact and normalised): it is folded into the raw means, and every DMOL
    function (NLL, sampling) is unchanged.

    Args:
        params: ``(..., 10K)`` raw DMOL outputs.
        base: ``(..., 3)`` the guess, scaled like the pixels (``[-1, 1]``).

    Returns:
        ``(..., 10K)`` outputs whose means include the shift.
    """
    k = params.shape[-1] // PARAMS_PER_MIXTURE
    logits, means, log_scales, coeffs = params.split([k, 3 * k, 3 * k, 3 * k], dim=-1)
    a = torch.tanh(coeffs.unflatten(-1, (k, 3)))  # (..., K, 3)
    base = base.to(params.dtype).unsqueeze(-2)  # (..., 1, 3)
    r, g, b = base.unbind(-1)  # (..., 1) each
    shift = torch.stack(torch.broadcast_tensors(
        r, g - a[..., 0] * r, b - a[..., 1] * r - a[..., 2] * g), dim=-1)  # (..., K, 3)
    return torch.cat([logits, means + shift.flatten(-2), log_scales, coeffs], dim=-1)


def dmol_shift_log_scales(params: Tensor, offsets) -> Tensor:
    """Widen or narrow DMOL outputs per channel: ``offsets`` ``(3,)`` (r, g, b) is added to
    every component's raw log-scale of that channel (before the clamp at ``MIN_LOG_SCALE``).
    Each logistic's scale is multiplied by ``exp(offset)``; the result is the same DMOL family,
    exact and normalised. Returns ``(..., 10K)``."""
    k = params.shape[-1] // PARAMS_PER_MIXTURE
    logits, means, log_scales, coeffs = params.split([k, 3 * k, 3 * k, 3 * k], dim=-1)
    offsets = torch.as_tensor(offsets, dtype=params.dtype, device=params.device)
    log_scales = (log_scales.unflatten(-1, (k, 3)) + offsets).flatten(-2)
    return torch.cat([logits, means, log_scales, coeffs], dim=-1)


def dmol_adapt(params: Tensor, adapter: Tensor) -> Tensor:
    """Refit DMOL outputs to one image with a few numbers, ``adapter`` ``(4 + 4K,)``:

    * ``adapter[0:3]`` ``m_c`` and ``adapter[3:3 + 3K]`` ``a_kc`` (component-major): every raw
      log-scale ``s_kc`` of component ``k`` and channel ``c`` becomes ``s_kc * exp(m_c) + a_kc``
      (before the clamp at ``MIN_LOG_SCALE``), so logistics can grow sharper or wider each on
      its own, and sharp and wide ones move apart or together (``a_kc = a_c`` for all ``k``
      alone is :func:`dmol_shift_log_scales`);
    * ``adapter[3 + 3K]`` ``t`` and ``adapter[4 + 3K:]`` ``b_k``: every mixture logit ``l_k``
      becomes ``l_k * exp(t) + b_k``, a temperature on the mixture weights and a prior over
      components.

    Means and coefficients are unchanged. The result is the same DMOL family, exact and
    normalised; an all-zero adapter leaves ``params`` as they are. Returns ``(..., 10K)``."""
    k = params.shape[-1] // PARAMS_PER_MIXTURE
    if adapter.shape != (4 + 4 * k,):
        raise ValueError(f"a DMOL adapter of {k} mixtures has {4 + 4 * k} numbers, "
                         f"got shape {tuple(adapter.shape)}")
    adapter = adapter.to(params.dtype)
    scale, offset, temperature, bias = adapter.split([3, 3 * k, 1, k])
    logits, means, log_scales, coeffs = params.split([k, 3 * k, 3 * k, 3 * k], dim=-1)
    log_scales = (log_scales.unflatten(-1, (k, 3)) * scale.exp()).flatten(-2) + offset
    logits = logits * temperature.exp() + bias
    return torch.cat([logits, means, log_scales, coeffs], dim=-1)


def dmol_conditional_means(p: DMOLParams, x: Tensor) -> Tensor:
    """Each component's channel means given the conditioning values ``x`` ``(..., 3)``, scaled
    (channel c reads only the channels before it): ``(..., K, 3)``."""
    x = x.unsqueeze(-2)  # (..., 1, 3)
    mean_r = p.means[..., 0]
    mean_g = p.means[..., 1] + p.coeffs[..., 0] * x[..., 0]
    mean_b = p.means[..., 2] + p.coeffs[..., 1] * x[..., 0] + p.coeffs[..., 2] * x[..., 1]
    return torch.stack(torch.broadcast_tensors(mean_r, mean_g, mean_b), dim=-1)  # (..., K, 3)


def _check_pixels(params: Tensor, pixels: Tensor) -> None:
    try:
        torch.broadcast_shapes(params.shape[:-1], pixels.shape[:-1])
    except RuntimeError:
        broadcastable = False
    else:
        broadcastable = True
    if pixels.shape[-1] != 3 or not broadcastable:
        raise ValueError(
            f"pixels must have shape (..., 3) with a batch shape matching (or broadcastable with) "
            f"params.shape[:-1] = {tuple(params.shape[:-1])}, got {tuple(pixels.shape)}; pass "
            f"channel-last pixels, e.g. images.permute(0, 2, 3, 1)"
        )
    if pixels.is_floating_point():
        raise TypeError(f"pixels must be integer values 0..255 (uint8/long), got {pixels.dtype}")


def _log_probs_per_channel(p: DMOLParams, pixels: Tensor) -> Tensor:
    """log p_k(x_c | x_<c): (..., K, 3), from split params and (..., 3) integer pixels."""
    x = scale_pixels(pixels, p.means.dtype)  # (..., 3)
    means = dmol_conditional_means(p, x)  # (..., K, 3)
    return discretized_logistic_log_prob(x.unsqueeze(-2), means, p.log_scales)  # (..., K, 3)


def dmol_log_probs_per_channel(params: Tensor, pixels: Tensor) -> Tensor:
    """Per-mixture, per-channel conditional log-probabilities ``log p_k(x_c | x_<c)``.

    Args:
        params: ``(..., 10K)`` raw DMOL outputs.
        pixels: ``(..., 3)`` integer values 0..255 (channel last); the batch shapes of params and
            pixels broadcast.

    Returns:
        ``(..., K, 3)`` nats. The mixture log-likelihood of the pixel is
        ``logsumexp_k(log_softmax(logits)_k + sum_c out[..., k, c])``.
    """
    _check_pixels(params, pixels)
    return _log_probs_per_channel(dmol_split_params(params), pixels)


def dmol_nll_per_pixel(params: Tensor, pixels: Tensor) -> Tensor:
    """Negative log-likelihood in nats of each pixel under the DMOL head.

    The mixture is over the joint of the three channels, so the NLL cannot be split by channel;
    "nats per subpixel" is this value divided by 3 (bits/dim counts every subpixel as a dimension,
    as in PixelCNN++).

    Args:
        params: ``(..., 10K)`` raw DMOL outputs (bf16/fp16 are upcast to float32).
        pixels: ``(..., 3)`` integer values 0..255 (channel last); the batch shapes of params and
            pixels broadcast.

    Returns:
        ``(...)`` nats per pixel, no reduction.
    """
    _check_pixels(params, pixels)
    p = dmol_split_params(params)
    log_probs = _log_probs_per_channel(p, pixels)  # (..., K, 3)
    joint = log_probs.sum(-1) + F.log_softmax(p.logits, dim=-1)  # (..., K)
    return -torch.logsumexp(joint, dim=-1)  # (...)


def dmol_nll_per_channel(params: Tensor, pixels: Tensor) -> Tensor:
    """:func:`dmol_nll_per_pixel` split by channel: nats of r, of g given r, of b given r and g.

    With mixture weights ``pi_k`` and per-channel conditionals ``p_k``, ``-log p(r) = -log sum_k
    pi_k p_k(r)``, ``-log p(g | r) = -log sum_k pi_k p_k(r) p_k(g | r) + log sum_k pi_k p_k(r)``,
    and b likewise (the posterior over ``k`` carries from one channel to the next). The three add
    up to the pixel's NLL. Returns ``(..., 3)`` nats.
    """
    _check_pixels(params, pixels)
    p = dmol_split_params(params)
    log_probs = _log_probs_per_channel(p, pixels)  # (..., K, 3)
    log_weights = F.log_softmax(p.logits, dim=-1).unsqueeze(-1)  # (..., K, 1)
    joint = torch.logsumexp(log_weights + log_probs.cumsum(-1), dim=-2)  # (..., 3): r, rg, rgb
    return -torch.cat([joint[..., :1], joint[..., 1:] - joint[..., :-1]], dim=-1)


def dmol_sample(
    params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Draw one pixel per position from the DMOL head.

    The mixture is picked by Gumbel-max on ``logits / temperature`` (argmax at temperature 0).
    Channels are then sampled in order r, g, b from logistics whose scale is multiplied by the
    temperature (temperature 0 gives the mean). Each channel is clamped to ``[-1, 1]`` and rounded
    to 0..255 *before* it conditions the next channel's mean, so that at temperature 1 the samples
    follow exactly the pmf that ``dmol_nll_per_pixel`` scores (the PixelCNN++ sampler conditions on
    the continuous value instead).

    Args:
        params: ``(..., 10K)`` raw DMOL outputs.
        temperature: ``>= 0``.
        generator: optional ``torch.Generator`` on ``params.device``.

    Returns:
        ``(..., 3)`` uint8 pixels (channel last).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    p = dmol_split_params(params)
    dtype, device = p.logits.dtype, p.logits.device

    def uniform(shape: tuple[int, ...]) -> Tensor:
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return u.clamp(min=torch.finfo(dtype).tiny)  # rand is in [0, 1): keep log(u) finite

    if temperature == 0:
        mixture = p.logits.argmax(dim=-1)  # (...)
    else:
        gumbel = -torch.log(-torch.log(uniform(tuple(p.logits.shape))))
        mixture = (p.logits / temperature + gumbel).argmax(dim=-1)  # (...)
    index = mixture[..., None, None].expand(*mixture.shape, 1, 3)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-2, index).squeeze(-2)  # (..., K, 3) -> (..., 3)

    means, log_scales, coeffs = pick(p.means), pick(p.log_scales), pick(p.coeffs)
    # Standard logistic noise, log(u) - log(1 - u), scaled by temperature.
    u = uniform(tuple(means.shape))
    noise = temperature * torch.exp(log_scales) * (torch.log(u) - torch.log1p(-u))  # (..., 3)

    values = []  # discretized channels, 0..255
    scaled = []  # the same values scaled to [-1, 1]
    for c in range(3):
        mean = means[..., c]
        if c == 1:
            mean = mean + coeffs[..., 0] * scaled[0]
        elif c == 2:
            mean = mean + coeffs[..., 1] * scaled[0] + coeffs[..., 2] * scaled[1]
        x = (mean + noise[..., c]).clamp(-1.0, 1.0)
        value = torch.round((x + 1.0) * 127.5)
        values.append(value)
        scaled.append(value / 127.5 - 1.0)
    return torch.stack(values, dim=-1).to(torch.uint8)  # (..., 3)
