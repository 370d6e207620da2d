"""Spec for exact conditioning on the input's block means (``SuperResolutionConfig.block_means``,
``imgtx.sr.blockmean``): the sum ranges against every possible sum, the block layout against a
loop, the truncated likelihood normalised by brute force and never above the unrestricted one,
draws that follow the truncated pmf, and decoding (cached, recomputed, fixed-point) whose every
output downscales exactly to its input."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported

import itertools

import pytest
import torch

from imgtx.configs import ImageTransformerConfig
from imgtx.likelihood import (
    discretized_logistic_log_mass,
    discretized_logistic_log_prob,
    dmol_split_params,
    scale_pixels,
)
from imgtx.neighbours import decoding_order
from imgtx.resample import downscale_area, upscale_bicubic
from imgtx.sr import SuperResolutionTransformer, get_config
from imgtx.sr.anchor import StayNearAnchor
from imgtx.sr.blockmean import (
    BlockMeanConstraint,
    _dmol_draw_bounded,
    back_project,
    block_structure,
    block_sum_range,
    project_to_block_means,
)
from imgtx.sr.model import make_low_res
from imgtx.sr.upscale import upscale_batch, upscale_image

torch.set_num_threads(1)

DMOL = dict(likelihood="dmol", neighbour_inputs=True, predictor="med", block_length=8)


def model_with(likelihood: str, seed: int = 0, anchor: str = "bicubic", noise: float = 0.3,
               **overrides) -> SuperResolutionTransformer:
    """A tiny 4 -> 16 model with block means, every weight perturbed (the zero-initialised
    anchor maps included) so that its outputs are far from any anchor."""
    torch.manual_seed(seed)
    extra = DMOL if likelihood == "dmol" else {}
    config = get_config("tiny", anchor=anchor, block_means=True, **{**extra, **overrides})
    model = SuperResolutionTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g).to(torch.uint8)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("rounding", ["nearest", "floor"])
def test_sum_ranges_hold_exactly_the_sums_that_round_to_each_mean(scale, rounding):
    area = scale * scale
    sums = torch.arange(255 * area + 1)
    # Images whose single block sums to each possible value: spread the sum over the pixels.
    per_pixel = torch.stack([(sums + i) // area for i in range(area)], dim=1)  # (S, A)
    blocks = per_pixel.view(-1, 1, scale, scale).expand(-1, 3, -1, -1).to(torch.uint8)
    means = downscale_area(blocks, scale, rounding)  # (S, 3, 1, 1)
    every_mean = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).expand(-1, 3, 1, 1)
    lo, hi = block_sum_range(every_mean, scale, rounding)  # (256, 1, 3)
    for m in range(256):
        hits = sums[means[:, 0, 0, 0] == m]
        if len(hits):
            assert (lo[m, 0, 0].item(), hi[m, 0, 0].item()) == (hits.min().item(),
                                                                hits.max().item())


@pytest.mark.parametrize("likelihood,attention", [("cat", "local1d"), ("dmol", "local1d"),
                                                  ("cat", "local2d")])
def test_block_layout_matches_a_loop_over_positions(likelihood, attention):
    config = ImageTransformerConfig(image_size=8, likelihood=likelihood, attention=attention,
                                    block_length=8, query_shape=(4, 6), memory_flange=(2, 6),
                                    num_layers=1, hidden_size=8, ffn_size=8, num_heads=1)
    scale = 2
    block, channel, earlier, later = block_structure(config, scale)
    raster, _ = decoding_order(config)
    per_pixel = 1 if likelihood == "dmol" else 3
    n = len(raster)
    key = []
    for t in range(n):
        row, col = divmod(raster[t].item(), 8 * per_pixel)
        key.append(((row // scale, col // per_pixel // scale),
                    col % 3 if per_pixel == 3 else -1))
    for t in range(n):
        (br, bc), c = key[t]
        assert block[t] == br * 4 + bc and channel[t] == c
        same = [u for u in range(n) if key[u] == key[t]]
        assert sorted(i for i in earlier[t].tolist() if i < n) == [u for u in same if u < t]
        assert later[t] == sum(u > t for u in same)


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_truncated_likelihood_is_never_above_the_unrestricted_one(likelihood):
    model = model_with(likelihood)
    high = images(3, 16, seed=1)
    low = make_low_res(high, model.config)
    restricted = model.bits_per_dim(low, high)
    model.config.block_means = False
    free = model.bits_per_dim(low, high)
    assert (restricted < free - 1e-3).all()


def test_mismatched_inputs_are_refused_in_one_line():
    model = model_with("dmol")
    high = images(1, 16)
    low = make_low_res(high, model.config)
    low[0, 0, 0, 0] = (int(low[0, 0, 0, 0]) + 9) % 256
    with pytest.raises(ValueError, match="do not downscale to the given inputs"):
        model.nll(low, high)


def _last_position_values(model, high, candidates, channels):
    """Copies of ``high`` whose last pixel takes each combination of ``candidates``' values in
    ``channels`` (the rest kept), and the nats of that last position under the model."""
    grids = torch.tensor(list(itertools.product(*candidates)))  # (M, len(channels))
    batch = high.expand(len(grids), -1, -1, -1).clone()
    for j, c in enumerate(channels):
        batch[:, c, -1, -1] = grids[:, j].to(torch.uint8)
    low = make_low_res(high, model.config)
    nats = []
    for chunk in batch.split(256):
        nll = model.nll(low.expand(len(chunk), -1, -1, -1), chunk)  # (M, N) raster
        nats.append(nll[:, -1] if model.config.likelihood == "dmol"
                    else nll[:, -len(channels):].sum(1))
    return torch.cat(nats)


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_the_last_positions_truncated_distribution_sums_to_one(likelihood):
    """Brute force: at the image's last pixel (the last of its block, so every channel is
    restricted to at most 16 values), exp(-nll) over every value the input allows sums to 1."""
    model = model_with(likelihood, seed=2, input_size=2)  # 2 -> 8: 4096 8x8 images for DMOL
    high = images(1, 8, seed=3)
    low = make_low_res(high, model.config)
    constraint = BlockMeanConstraint(model.decoder.config, low, 4)
    values = model.decoder.to_sequence(model.decoder.targets(high))
    lo, hi = constraint.bounds(values)
    if likelihood == "dmol":  # the whole pixel: all combinations of r, g, b
        ranges = [range(lo[0, -1, c], hi[0, -1, c] + 1) for c in range(3)]
        nats = _last_position_values(model, high, ranges, [0, 1, 2])
    else:  # the last subpixel (b) given r and g
        ranges = [range(lo[0, -1], hi[0, -1] + 1)]
        nats = _last_position_values(model, high, ranges, [2])
    # the real bounds: the block's rounded mean leaves the last value of a 4x4 block at most
    # 16 choices, and more than one (else the sum below has a single term)
    assert all(1 < len(r) <= 16 for r in ranges), ranges
    assert torch.exp(-nats.double()).sum().item() == pytest.approx(1.0, abs=1e-4)


def test_truncated_dmol_draws_follow_the_truncated_pmf():
    torch.manual_seed(0)
    params = torch.randn(1, 100).expand(8000, -1)
    lo = torch.tensor([100, 0, 30]).expand(8000, -1)
    hi = torch.tensor([115, 255, 40]).expand(8000, -1)
    g = torch.Generator().manual_seed(1)
    drawn = _dmol_draw_bounded(params, lo, hi, 1.0, g)
    assert ((drawn >= lo) & (drawn <= hi)).all()
    # r's pmf (it reads no other channel), truncated to 100..115 and renormalised
    p = dmol_split_params(params[:1])
    per_value = discretized_logistic_log_prob(scale_pixels(torch.arange(100, 116), torch.float32),
                                              p.means[0, :, 0, None], p.log_scales[0, :, 0, None])
    pmf = torch.softmax(torch.logsumexp(torch.log_softmax(p.logits[0], 0)[:, None] + per_value,
                                        dim=0), dim=0)
    freq = torch.bincount(drawn[:, 0] - 100, minlength=16).float() / len(drawn)
    assert (freq - pmf).abs().max().item() < 0.025


def test_interval_mass_equals_the_sum_of_its_bins():
    torch.manual_seed(0)
    mean, log_scale = torch.randn(50, 1) * 0.8, torch.rand(50, 1) * 3 - 4
    bins = discretized_logistic_log_prob(scale_pixels(torch.arange(256), torch.float64),
                                         mean.double(), log_scale.double()).exp()  # (50, 256)
    for lo, hi in [(0, 255), (0, 17), (100, 115), (240, 255), (7, 7), (3, 200)]:
        mass = discretized_logistic_log_mass(torch.tensor(lo), torch.tensor(hi), mean.double(),
                                             log_scale.double()).exp()[:, 0]
        if hi - lo < 16:  # summed over the bins: exact
            assert torch.allclose(mass, bins[:, lo : hi + 1].sum(1), rtol=1e-12, atol=0)
        else:  # between the edges: off by the tiny-bin substitution only
            assert torch.allclose(mass, bins[:, lo : hi + 1].sum(1), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_every_sample_downscales_exactly_to_its_input(likelihood, temperature):
    model = model_with(likelihood, seed=4)
    low = make_low_res(images(3, 16, seed=5), model.config)
    low[0] = 250  # bright and dark inputs make the bounds bind early in each block
    low[1, :, :2] = 3
    out = upscale_batch(model, low, temperature=temperature,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(make_low_res(out, model.config), low)


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
@pytest.mark.parametrize("rule", [None, StayNearAnchor(0.5, 0.0)])
def test_temperature_zero_is_the_same_cached_recomputed_and_fixed_point(likelihood, rule):
    model = model_with(likelihood, seed=6, noise=0.05)
    low = make_low_res(images(2, 16, seed=7), model.config)
    cached = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=False)
    recomputed = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=False,
                               use_cache=False)
    fixed = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=True)
    assert torch.equal(cached, recomputed) and torch.equal(cached, fixed)
    assert torch.equal(make_low_res(cached, model.config), low)


def test_an_untrained_anchored_model_returns_its_anchors_which_fit_the_input():
    """With block means the anchors are the bicubic upscale projected onto the input's block
    means; a fresh anchored categorical model returns them exactly at temperature 0."""
    torch.manual_seed(0)
    model = SuperResolutionTransformer(get_config("tiny", anchor="bicubic", block_means=True))
    low = make_low_res(images(2, 16, seed=8), model.config)
    out = upscale_batch(model.eval(), low, temperature=0)
    anchors = model.anchors(low)
    assert torch.equal(out, anchors) and torch.equal(make_low_res(anchors, model.config), low)
    assert not torch.equal(anchors, upscale_bicubic(low, 4))


def smooth_batch(batch: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g) * 255
    fine = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear",
                                           align_corners=False)
    noise = torch.randn(batch, 3, size, size, generator=g) * 12
    return (fine + noise).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("scale,rounding", [(4, "nearest"), (2, "floor"), (3, "nearest")])
def test_projection_downscales_exactly_and_moves_only_blocks_that_do_not_fit(scale, rounding):
    x = images(6, 12 * scale // 2, seed=9)
    low = images(6, 6, seed=10)
    low[0], low[1, 0] = 0, 255  # saturated targets: pixels pinned at 0/255 while others move
    out = project_to_block_means(x, low, scale, rounding)
    assert torch.equal(downscale_area(out, scale, rounding), low)
    fits = downscale_area(x, scale, rounding) == low
    moved = (out != x).view(6, 3, 6, scale, 6, scale).any(dim=5).any(dim=3)
    assert not (moved & fits).any() and moved.any()


def test_projection_spreads_the_shift_evenly():
    x = smooth_batch(4, 16, seed=11)
    x = x.clamp(30, 220)  # away from 0/255: no pixel saturates
    low = (downscale_area(x, 4).long() + torch.randint(-6, 7, (4, 3, 4, 4))).clamp(0, 255)
    out = project_to_block_means(x, low.to(torch.uint8), 4)
    shift = (out.long() - x.long()).view(4, 3, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5)
    spread = shift.flatten(-2).amax(-1) - shift.flatten(-2).amin(-1)
    assert spread.max() <= 1


def test_projected_bicubic_is_closer_to_the_truth_than_bicubic():
    """The projection is onto a convex set holding the truth, so it is non-expansive."""
    truth = smooth_batch(16, 32, seed=12)
    low = downscale_area(truth, 4)
    bicubic = upscale_bicubic(low, 4)
    projected = project_to_block_means(bicubic, low, 4)
    err = (bicubic.double() - truth.double()).pow(2).flatten(1).sum(1)
    err_projected = (projected.double() - truth.double()).pow(2).flatten(1).sum(1)
    assert err_projected.sum() < 0.97 * err.sum()
    assert (err_projected <= err * 1.01 + 16).all()  # per image, up to integer rounding


def test_back_projection_downscales_exactly_and_beats_bicubic():
    truth = smooth_batch(16, 32, seed=13)
    low = downscale_area(truth, 4)
    bicubic = upscale_bicubic(low, 4)
    out = back_project(bicubic, low, 4)
    assert torch.equal(downscale_area(out, 4), low)
    err = (bicubic.double() - truth.double()).pow(2).sum()
    err_projected = (project_to_block_means(bicubic, low, 4).double() - truth.double()).pow(2).sum()
    err_back = (out.double() - truth.double()).pow(2).sum()
    assert err_back < err_projected < err


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_tiled_upscale_of_any_size_downscales_exactly_to_the_image(temperature):
    model = model_with("dmol", seed=14)
    image = images(1, 16, seed=15)[0, :, :10, :7].contiguous()  # 10x7: padded to 3x2 tiles
    out = upscale_image(model, image, temperature=temperature, seed=0)
    assert out.shape == (3, 40, 28)
    assert torch.equal(downscale_area(out[None], 4)[0], image)
