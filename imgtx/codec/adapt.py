"""A DMOL model's output distribution refitted to one image, sent as a few bytes of header.

A fixed model codes every image with the statistics of its training photos. A large image has
statistics of its own: a sky is smoother, a lawn noisier, and the mixture weights the model is
sure of on its training crops can be overconfident on another camera's photo. Classical codecs
adapt to the image they code (JPEG XL learns its context tree per image; CALIC and LOCO-I adapt
their error models as they go). Here the encoder fits a small change of the model's DMOL outputs
to the image, :func:`imgtx.likelihood.dmol_adapt` (``4 + 4K`` numbers: a scale of the log-scales
per channel and an offset per component and channel, a temperature and a bias per component on
the mixture logits), and
writes it to the header as int8 codes of step :data:`STEP`. Both sides apply the same decoded
numbers to every position's outputs, so the coded pmfs are still one exact, normalised DMOL
distribution each, computed the same way by the encoder and the decoder.

The fit runs on the head outputs of one teacher-forced forward pass over at most ``max_tiles``
evenly spaced tiles (the transform search's sample), by L-BFGS on the code length in float64,
each number kept inside the codes' range by a scaled tanh. It pays for its header bytes
(``4 + 4K + 1``: 45 for the shipped photo model) on images of more than a few tiles; below
:data:`imgtx.codec.transform.FULL_SEARCH_TILES` tiles ``compress(adapt="auto")`` does not try.
"""

from __future__ import annotations

import numpy as np
import torch

from imgtx.codec.coder import tile_count
from imgtx.codec.transform import (
    FULL_SEARCH_TILES,
    IDENTITY,
    _forward,
    _mask,
    _sample,
    scale_offsets,
)
from imgtx.likelihood import (
    PARAMS_PER_MIXTURE,
    dmol_adapt,
    dmol_nll_per_channel,
    dmol_shift_log_scales,
    nats_to_bits,
)

__all__ = ["STEP", "adapter_values", "default_adapt", "fit_adapter"]

#: An adapter number is ``code * STEP`` for an int8 ``code``: ``[-8, 7.9375]`` in steps of 1/16.
STEP = 1 / 16
_BOUND = 127 * STEP


def default_adapt(height: int, width: int, tile: int) -> bool:
    """Whether ``compress(adapt="auto")`` fits an adapter to an image of this size: more than
    :data:`~imgtx.codec.transform.FULL_SEARCH_TILES` tiles."""
    return tile_count(height, width, tile) > FULL_SEARCH_TILES


def adapter_values(codes: bytes) -> torch.Tensor:
    """The adapter ``(4 + 4K,)`` float64 of its int8 ``codes`` as the header stores them."""
    return torch.from_numpy(np.frombuffer(codes, dtype=np.int8).astype(np.float64) * STEP)


def fit_adapter(model, pixels: np.ndarray, one_channel: bool, scales: int = 0, batch: int = 64,
                max_tiles: int = 16, max_iter: int = 60) -> tuple[bytes, float, float]:
    """The adapter codes of ``pixels`` (already transformed, coded with the log-scale offsets
    ``scales``) that minimise the model's code length on at most ``max_tiles`` evenly spaced
    tiles. Returns ``(codes, bits per coded subpixel without, with the quantised adapter)``, both
    on those tiles; ``codes`` is empty when the adapter does not lower them."""
    if model.config.likelihood != "dmol":
        raise ValueError("an adapter refits DMOL outputs; this model is categorical")
    tiles, sizes = _sample(model, pixels, IDENTITY, max_tiles)
    mask = _mask(model.config.image_size, sizes, one_channel).double()  # (T, N, 3)
    heads, targets = [], []
    for images, head in _forward(model, tiles, batch):
        head = head.double()
        heads.append(dmol_shift_log_scales(head, scale_offsets(scales)) if scales else head)
        targets.append(model.targets(images))
    head, target = torch.cat(heads), torch.cat(targets)
    count = 4 + 4 * (head.shape[-1] // PARAMS_PER_MIXTURE)
    subpixels = float(mask.sum())

    def bits(adapter: torch.Tensor) -> torch.Tensor:
        nats = dmol_nll_per_channel(dmol_adapt(head, adapter), target) * mask
        return nats_to_bits(nats.sum()) / subpixels

    raw = torch.zeros(count, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([raw], max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = bits(_BOUND * torch.tanh(raw / _BOUND))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    fitted = _BOUND * torch.tanh(raw.detach() / _BOUND)
    codes = torch.round(fitted / STEP).clamp(-128, 127).to(torch.int8).numpy().tobytes()
    with torch.no_grad():
        before = float(bits(torch.zeros(count, dtype=torch.float64)))
        after = float(bits(adapter_values(codes)))
    if not after < before:
        return b"", before, before
    return codes, before, after
