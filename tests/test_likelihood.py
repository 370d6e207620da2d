"""Spec for imgtx.likelihood: categorical NLL, bits/dim, and the DMOL head."""

import math

import pytest
import torch
import torch.nn.functional as F

from imgtx.likelihood import (
    bits_per_dim,
    categorical_nll,
    discretized_logistic_log_prob,
    dmol_log_probs_per_channel,
    dmol_nll_per_channel,
    dmol_nll_per_pixel,
    dmol_sample,
    dmol_shift_means,
    dmol_split_params,
    nats_to_bits,
)

ALL_VALUES = torch.arange(256)


def random_dmol_params(
    *batch: int, num_mixtures: int = 10, seed: int = 0, log_scale_range=(-3.0, 0.0)
) -> torch.Tensor:
    """(..., 10K) float64 params with moderate scales (no bin falls under the 1e-5 fallback
    by enough mass to matter), in the documented layout."""
    g = torch.Generator().manual_seed(seed)
    k = num_mixtures
    shape = (*batch,)
    logits = torch.randn(*shape, k, generator=g, dtype=torch.float64)
    means = torch.rand(*shape, 3 * k, generator=g, dtype=torch.float64) * 1.6 - 0.8
    lo, hi = log_scale_range
    log_scales = torch.rand(*shape, 3 * k, generator=g, dtype=torch.float64) * (hi - lo) + lo
    coeffs = torch.randn(*shape, 3 * k, generator=g, dtype=torch.float64)
    return torch.cat([logits, means, log_scales, coeffs], dim=-1)


def slow_dmol_nll(params: torch.Tensor, pixel: tuple[int, int, int]) -> float:
    """Obviously-correct reference for one pixel: plain loops over exact logistic CDF differences
    in float64, with the PixelCNN++ density fallback for tiny bins spelled out."""
    k = params.shape[-1] // 10
    logits = params[:k].tolist()
    means = params[k : 4 * k].reshape(k, 3).tolist()
    log_scales = params[4 * k : 7 * k].reshape(k, 3).clamp(min=-7).tolist()
    coeffs = torch.tanh(params[7 * k :].reshape(k, 3)).tolist()
    x = [v / 127.5 - 1 for v in pixel]

    def cdf(t: float) -> float:
        return 1.0 / (1.0 + math.exp(-t))

    log_norm = math.log(sum(math.exp(a) for a in logits))
    total = 0.0
    for j in range(k):
        mu = [
            means[j][0],
            means[j][1] + coeffs[j][0] * x[0],
            means[j][2] + coeffs[j][1] * x[0] + coeffs[j][2] * x[1],
        ]
        prob = math.exp(logits[j] - log_norm)
        for c in range(3):
            s = math.exp(log_scales[j][c])
            upper = (x[c] + 1 / 255 - mu[c]) / s
            lower = (x[c] - 1 / 255 - mu[c]) / s
            if pixel[c] == 0:  # open edge bin (-inf, upper]
                bin_prob = cdf(upper)
            elif pixel[c] == 255:  # open edge bin [lower, inf): 1 - cdf(lower) = cdf(-lower)
                bin_prob = cdf(-lower)
            else:
                bin_prob = cdf(upper) - cdf(lower)
            if 0 < pixel[c] < 255 and bin_prob <= 1e-5:
                # PixelCNN++ fallback for tiny inner bins: density at the centre times 2/255
                t = (x[c] - mu[c]) / s
                bin_prob = math.exp(-t) / (s * (1 + math.exp(-t)) ** 2) * (2 / 255)
            prob *= bin_prob
        total += prob
    return -math.log(total)


# ----------------------------------------------------------------------------------------------
# Categorical and units
# ----------------------------------------------------------------------------------------------


def test_categorical_nll_of_uniform_logits_is_ln256_for_every_target():
    logits = torch.zeros(256, 256)
    nll = categorical_nll(logits, ALL_VALUES)
    assert nll.shape == (256,)
    torch.testing.assert_close(nll, torch.full((256,), math.log(256.0)), rtol=0, atol=1e-6)
    assert bits_per_dim(nll.sum().item(), 256) == pytest.approx(8.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_categorical_nll_matches_cross_entropy_and_computes_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 7, 256, generator=g) * 4).to(dtype)
    targets = torch.randint(0, 256, (2, 5, 7), generator=g)
    nll = categorical_nll(logits, targets)
    assert nll.dtype == torch.float32 and nll.shape == (2, 5, 7)
    expected = F.cross_entropy(
        logits.float().reshape(-1, 256), targets.reshape(-1), reduction="none"
    ).reshape(2, 5, 7)
    torch.testing.assert_close(nll, expected)


def test_categorical_nll_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="256"):
        categorical_nll(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        categorical_nll(torch.zeros(4, 256), torch.zeros(5, dtype=torch.long))


def test_bits_per_dim_and_nats_to_bits():
    assert bits_per_dim(3 * 1024 * math.log(2) * 2.9, 3 * 1024) == pytest.approx(2.9)
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    torch.testing.assert_close(nats_to_bits(torch.tensor([math.log(4)])), torch.tensor([2.0]))
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)


# ----------------------------------------------------------------------------------------------
# DMOL layout and likelihood
# ----------------------------------------------------------------------------------------------


def test_dmol_split_follows_the_documented_layout():
    k = 10
    params = torch.arange(100, dtype=torch.float32)
    p = dmol_split_params(params)
    assert p.num_mixtures == k
    torch.testing.assert_close(p.logits, torch.arange(10.0))
    # mixture-major: means[k, c] = params[10 + 3k + c]
    assert p.means[2, 1].item() == 10 + 3 * 2 + 1
    assert p.log_scales[0, 0].item() == 40  # not clamped: 40 > -7
    assert p.coeffs[9, 2].item() == pytest.approx(math.tanh(99.0))
    clamped = dmol_split_params(torch.full((100,), -20.0))
    assert clamped.log_scales.min().item() == -7.0
    with pytest.raises(ValueError, match="10 \\* num_mixtures"):
        dmol_split_params(torch.zeros(99))


@pytest.mark.parametrize("num_mixtures", [1, 3, 10])
def test_dmol_nll_matches_slow_reference(num_mixtures):
    params = random_dmol_params(6, num_mixtures=num_mixtures, seed=num_mixtures)
    pixels = torch.tensor(
        [[0, 0, 0], [255, 255, 255], [0, 128, 255], [17, 200, 3], [128, 127, 129], [255, 0, 64]]
    )
    nll = dmol_nll_per_pixel(params, pixels)
    assert nll.shape == (6,)
    expected = torch.tensor(
        [slow_dmol_nll(params[i], tuple(pixels[i].tolist())) for i in range(6)], dtype=torch.float64
    )
    torch.testing.assert_close(nll, expected, rtol=1e-9, atol=1e-9)


def test_dmol_accepts_uint8_images_and_low_precision_params():
    params = random_dmol_params(2, 4, 4, seed=1)
    pixels = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    nll64 = dmol_nll_per_pixel(params, pixels)
    nll32 = dmol_nll_per_pixel(params.float(), pixels)
    nll_bf16 = dmol_nll_per_pixel(params.to(torch.bfloat16), pixels)
    torch.testing.assert_close(nll32.double(), nll64, rtol=1e-5, atol=1e-5)
    assert nll64.shape == (2, 4, 4) and nll_bf16.dtype == torch.float32
    # bf16 rounding of the params moves the NLL, but only a little.
    torch.testing.assert_close(nll_bf16.double(), nll64, rtol=0.05, atol=0.1)
    with pytest.raises(ValueError, match="channel-last"):
        dmol_nll_per_pixel(params, pixels.permute(0, 3, 1, 2))
    with pytest.raises(TypeError, match="integer"):
        dmol_nll_per_pixel(params, pixels.float())


def test_dmol_params_broadcast_over_pixels():
    params = random_dmol_params(1, seed=11)  # (1, 100)
    pixels = torch.randint(0, 256, (7, 3))
    torch.testing.assert_close(
        dmol_nll_per_pixel(params, pixels), dmol_nll_per_pixel(params.expand(7, 100), pixels)
    )
    with pytest.raises(ValueError, match="broadcastable"):
        dmol_nll_per_pixel(random_dmol_params(2, seed=11), pixels)


def test_dmol_conditionals_each_sum_to_one_for_every_conditioning_value():
    """Every per-mixture, per-channel conditional is a pmf over the 256 values."""
    params = random_dmol_params(num_mixtures=10, seed=3)
    # red: depends on nothing
    red = torch.stack([ALL_VALUES, torch.zeros(256), torch.zeros(256)], -1).long()
    lp = dmol_log_probs_per_channel(params.expand(256, 100), red)  # (256, K, 3)
    torch.testing.assert_close(
        lp[..., 0].exp().sum(0), torch.ones(10, dtype=torch.float64), rtol=0, atol=1e-4
    )
    # green given every red value: pixels (r, v, 0) for all r, v
    r, v = torch.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij")
    green = torch.stack([r, v, torch.zeros_like(r)], -1)  # (256 r, 256 v, 3)
    lp = dmol_log_probs_per_channel(params.expand(256, 256, 100), green)  # (r, v, K, 3)
    sums = lp[..., 1].exp().sum(1)  # (r, K)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-4)
    # blue given a spread of (r, g) including the edges
    cond = torch.tensor([[0, 0], [255, 255], [0, 255], [255, 0], [128, 64], [3, 250], [77, 140]])
    cond = cond[:, None, :].expand(-1, 256, -1)
    blue = torch.cat([cond, ALL_VALUES[None, :, None].expand(len(cond), -1, -1)], -1)
    lp = dmol_log_probs_per_channel(params.expand(len(cond), 256, 100), blue)
    sums = lp[..., 2].exp().sum(1)  # (cond, K)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-4)


def test_dmol_nll_per_channel_adds_up_to_the_pixel_and_is_each_channels_conditional():
    params = random_dmol_params(50, num_mixtures=4, seed=9)
    pixels = torch.randint(0, 256, (50, 3), generator=torch.Generator().manual_seed(9))
    per_channel = dmol_nll_per_channel(params, pixels)  # (50, 3)
    torch.testing.assert_close(per_channel.sum(-1), dmol_nll_per_pixel(params, pixels))
    # r's marginal, by brute force: sum over every (g, b) of the joint pmf
    g, b = torch.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij")
    for i in range(3):
        grid = torch.stack([torch.full_like(g, int(pixels[i, 0])), g, b], -1).reshape(-1, 3)
        marginal = torch.exp(-dmol_nll_per_pixel(params[i], grid.long())).sum()
        assert per_channel[i, 0].item() == pytest.approx(-math.log(marginal.item()), abs=1e-6)
    # a mixture of one: each channel is its own discretised logistic
    one = random_dmol_params(7, num_mixtures=1, seed=10)
    pixels = pixels[:7]
    expected = -dmol_log_probs_per_channel(one, pixels)[:, 0]  # (7, 3)
    torch.testing.assert_close(dmol_nll_per_channel(one, pixels), expected)


def slow_shifted_dmol_nll(params: torch.Tensor, base: list[float], pixel: tuple[int, int, int]
                          ) -> float:
    """Reference for :func:`dmol_shift_means`: the documented residual means written out, one
    mixture and channel at a time, as plain discretised logistics (no tiny bins here)."""
    k = params.shape[-1] // 10
    logits = torch.log_softmax(params[:k], 0).tolist()
    means = params[k : 4 * k].reshape(k, 3).tolist()
    log_scales = params[4 * k : 7 * k].reshape(k, 3).tolist()
    a = torch.tanh(params[7 * k :].reshape(k, 3)).tolist()
    x = [v / 127.5 - 1 for v in pixel]
    res = [x[c] - base[c] for c in range(3)]
    total = 0.0
    for j in range(k):
        mu = [base[0] + means[j][0],
              base[1] + means[j][1] + a[j][0] * res[0],
              base[2] + means[j][2] + a[j][1] * res[0] + a[j][2] * res[1]]
        prob = math.exp(logits[j])
        for c in range(3):
            s = math.exp(log_scales[j][c])
            upper = 1.0 if pixel[c] == 255 else 1 / (1 + math.exp(-(x[c] + 1 / 255 - mu[c]) / s))
            lower = 0.0 if pixel[c] == 0 else 1 / (1 + math.exp(-(x[c] - 1 / 255 - mu[c]) / s))
            prob *= upper - lower
        total += prob
    return -math.log(total)


def test_dmol_shift_means_centres_each_channel_on_its_residual():
    """The shifted outputs are the documented residual parameterisation, and still a pmf."""
    params = random_dmol_params(40, num_mixtures=3, seed=12, log_scale_range=(-2.5, -0.5))
    g = torch.Generator().manual_seed(12)
    base = torch.rand(40, 3, generator=g, dtype=torch.float64) * 2 - 1
    pixels = ((base + 1) * 127.5).round().long() + torch.randint(-6, 7, (40, 3), generator=g)
    pixels = pixels.clamp(0, 255)
    shifted = dmol_shift_means(params, base)
    nll = dmol_nll_per_pixel(shifted, pixels)
    for i in range(40):
        expected = slow_shifted_dmol_nll(params[i], base[i].tolist(), tuple(pixels[i].tolist()))
        assert nll[i].item() == pytest.approx(expected, abs=1e-9)
    # logits, log-scales and coefficients pass through; a zero base changes nothing
    k = 3
    torch.testing.assert_close(shifted[:, :k], params[:, :k])
    torch.testing.assert_close(shifted[:, 4 * k:], params[:, 4 * k:])
    torch.testing.assert_close(dmol_shift_means(params, torch.zeros(40, 3)), params)
    # a pmf: green given red sums to one over its 256 values with the shift in place
    r, v = torch.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij")
    grid = torch.stack([r, v, torch.zeros_like(r)], -1)  # (256 r, 256 v, 3)
    lp = dmol_log_probs_per_channel(shifted[0].expand(256, 256, -1), grid)
    sums = lp[..., 1].exp().sum(1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_dmol_brute_force_sum_over_all_256_cubed_pixels_is_one():
    params = random_dmol_params(num_mixtures=2, seed=4).float()[None]  # (1, 20)
    g, b = torch.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij")
    total = 0.0
    for red in range(256):  # chunks of 65536 pixels with a fixed red value
        pixels = torch.stack([torch.full_like(g, red), g, b], -1).reshape(-1, 3)
        nll = dmol_nll_per_pixel(params, pixels)  # params broadcast over the chunk
        total += torch.exp(-nll).sum().item()
    assert total == pytest.approx(1.0, abs=1e-4)


def test_tiny_bins_use_the_pixelcnnpp_density_fallback():
    """A bin far in the tail is scored as pdf(centre) * bin width, as in PixelCNN++."""
    x = torch.tensor([0.5], dtype=torch.float64)
    mean = torch.tensor([-0.5], dtype=torch.float64)
    log_scale = torch.tensor([-4.0], dtype=torch.float64)
    got = discretized_logistic_log_prob(x, mean, log_scale)
    t = (x - mean) / math.exp(-4.0)
    log_pdf = -t - (-4.0) - 2 * F.softplus(-t)
    torch.testing.assert_close(got, log_pdf - math.log(127.5))


@pytest.mark.parametrize("edge_value", [0, 255])
def test_dmol_gradients_are_finite_at_the_edge_values(edge_value):
    g = torch.Generator().manual_seed(5)
    params = (torch.randn(4, 100, generator=g) * 5).requires_grad_(True)
    with torch.no_grad():  # include the clamp region and far-away means
        params[0, 40:70] = -10.0
        params[1, 10:40] = 3.0
    pixels = torch.tensor(
        [
            [edge_value] * 3,
            [edge_value, 0, 255],
            [255 - edge_value] * 3,
            [edge_value, 128, edge_value],
        ]
    )
    loss = dmol_nll_per_pixel(params, pixels).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(params.grad).all()
    assert params.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# DMOL sampling
# ----------------------------------------------------------------------------------------------


def test_dmol_sample_at_temperature_zero_is_the_mean_of_the_top_mixture():
    params = random_dmol_params(5, num_mixtures=10, seed=6).float()
    sample = dmol_sample(params, temperature=0.0)
    assert sample.dtype == torch.uint8 and sample.shape == (5, 3)
    p = dmol_split_params(params)
    top = p.logits.argmax(-1)
    for i in range(5):
        k = top[i]
        mu, c = p.means[i, k], p.coeffs[i, k]

        def disc(x):
            return round((min(max(float(x), -1.0), 1.0) + 1) * 127.5)

        r = disc(mu[0])
        g = disc(mu[1] + c[0] * (r / 127.5 - 1))
        b = disc(mu[2] + c[1] * (r / 127.5 - 1) + c[2] * (g / 127.5 - 1))
        assert sample[i].tolist() == [r, g, b]


def test_dmol_sample_is_reproducible_with_a_generator():
    params = random_dmol_params(64, seed=7).float()
    a = dmol_sample(params, generator=torch.Generator().manual_seed(1))
    b = dmol_sample(params, generator=torch.Generator().manual_seed(1))
    c = dmol_sample(params, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="temperature"):
        dmol_sample(params, temperature=-1.0)


def _total_variation(samples: torch.Tensor, pmf: torch.Tensor) -> float:
    freq = torch.bincount(samples.long(), minlength=256).double() / len(samples)
    return 0.5 * (freq - pmf).abs().sum().item()


def test_dmol_single_logistic_sample_frequencies_match_the_pmf():
    params = random_dmol_params(num_mixtures=1, seed=8)
    params[1] = 0.9  # red mean near the top edge: the edge bin 255 gets real mass
    params[4] = -2.5
    n = 200_000
    samples = dmol_sample(params.expand(n, 10), generator=torch.Generator().manual_seed(0))
    red = torch.stack([ALL_VALUES, torch.zeros(256), torch.zeros(256)], -1).long()
    pmf = dmol_log_probs_per_channel(params.expand(256, 10), red)[:, 0, 0].exp()
    assert pmf[255] > 0.05
    assert _total_variation(samples[:, 0], pmf) < 0.02


def test_dmol_mixture_sample_green_marginal_matches_the_model():
    """Green depends on the sampled (discretized) red and on the mixture choice: its marginal
    sum_k pi_k sum_r p_k(r) p_k(g | r) must match the sample histogram."""
    params = random_dmol_params(num_mixtures=3, seed=9, log_scale_range=(-2.5, -1.5))
    params[21:30] = torch.tensor([0.0, 2.0, 0.0, 0.0, -2.0, 0.0, 0.0, 1.0, 0.0])  # strong coeffs
    n = 200_000
    samples = dmol_sample(params.expand(n, 30), generator=torch.Generator().manual_seed(0))
    r, v = torch.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij")
    pixels = torch.stack([r, v, torch.zeros_like(r)], -1)  # (r, g, 3)
    lp = dmol_log_probs_per_channel(params.expand(256, 256, 30), pixels)  # (r, g, K, 3)
    weights = torch.softmax(params[:3], -1)  # (K,)
    joint_rg = (lp[..., 0] + lp[..., 1]).exp() * weights  # (r, g, K)
    green_pmf = joint_rg.sum((0, 2))
    assert green_pmf.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert _total_variation(samples[:, 1], green_pmf) < 0.02


def test_dmol_temperature_narrows_the_samples():
    params = random_dmol_params(num_mixtures=1, seed=10, log_scale_range=(-2.0, -2.0))
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    hot = dmol_sample(params.expand(n, 10), temperature=1.0, generator=gen).float()
    cold = dmol_sample(params.expand(n, 10), temperature=0.3, generator=gen).float()
    assert cold[:, 0].std() < 0.5 * hot[:, 0].std()
