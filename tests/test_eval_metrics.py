"""Spec for eval/: codec baselines, confidence intervals, image metrics, resampling, GAN metrics."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from imgtx.eval.compression import encoded_size_bytes, png_bits_per_dim, webp_bits_per_dim
from imgtx.eval.fid import (
    FeatureExtractor,
    RandomConvFeatures,
    compute_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_extractor,
    inception_score,
    kernel_inception_distance,
)
from imgtx.eval.image_metrics import (
    downscale_area,
    psnr,
    ssim,
    upscale_bicubic,
    upscale_nearest,
)
from imgtx.eval.stats import mean_and_ci95


def random_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


# ----------------------------------------------------------------------------------------------
# Codec baselines
# ----------------------------------------------------------------------------------------------

CODECS = [("png", png_bits_per_dim), ("webp", webp_bits_per_dim)]


@pytest.mark.parametrize("codec, bits_per_dim", CODECS)
def test_constant_images_compress_far_below_8_bits(codec, bits_per_dim):
    images = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert bits_per_dim(images) < 1.0


@pytest.mark.parametrize("codec, bits_per_dim", CODECS)
def test_uniform_noise_costs_at_least_8_bits(codec, bits_per_dim):
    per_image = bits_per_dim(random_images(3, 32, 32), per_image=True)
    assert per_image.shape == (3,)
    assert (per_image >= 8.0).all()


@pytest.mark.parametrize("codec, bits_per_dim", CODECS)
def test_bits_per_dim_is_file_bits_over_subpixels(codec, bits_per_dim):
    images = random_images(2, 16, 24, seed=1)
    images[1, :, :8] = 0  # make the two files differ in size
    sizes = [encoded_size_bytes(image, codec) for image in images]
    assert sizes[0] != sizes[1]
    per_image = bits_per_dim(images, per_image=True)
    np.testing.assert_allclose(per_image, [8 * s / (3 * 16 * 24) for s in sizes])
    assert bits_per_dim(images) == pytest.approx(8 * sum(sizes) / (2 * 3 * 16 * 24))


@pytest.mark.parametrize("codec", ["png", "webp"])
def test_codecs_are_lossless(codec, monkeypatch):
    """The bytes imgtx's encoder writes (caught at Pillow's ``save``) decode to the image, pixel
    for pixel, and are as many as it reports."""
    written = []
    save = Image.Image.save

    def recording_save(image, fp, *args, **kwargs):
        save(image, fp, *args, **kwargs)
        written.append((fp.getvalue(), kwargs.get("format")))

    monkeypatch.setattr(Image.Image, "save", recording_save)
    image = random_images(1, 16, 24, seed=2)[0]  # (3, 16, 24): not square, so a transpose shows
    size = encoded_size_bytes(image, codec)
    ((data, format_name),) = written
    assert len(data) == size and format_name == codec.upper()
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == codec.upper()
    assert np.array_equal(np.asarray(decoded.convert("RGB")), image.permute(1, 2, 0).numpy())


def test_codecs_reject_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        png_bits_per_dim(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="codec"):
        encoded_size_bytes(torch.zeros(3, 8, 8, dtype=torch.uint8), "jpeg")


# ----------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------


def test_ci_of_constant_values_is_zero():
    assert mean_and_ci95([3.5] * 10) == (3.5, 0.0)


def test_ci_matches_hand_computation():
    # values 1..5: mean 3, sample std sqrt(2.5), t_{0.975,4} = 2.7764451051977987
    mean, half_width = mean_and_ci95([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert half_width == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5))


def test_ci_edge_cases():
    assert mean_and_ci95([2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_and_ci95([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_and_ci95([1.0, float("inf")])


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM
# ----------------------------------------------------------------------------------------------


def test_psnr_of_identical_images_is_inf():
    images = random_images(2, 8, 8)
    assert psnr(images, images) == float("inf")
    assert np.isinf(psnr(images, images, per_image=True)).all()


def test_psnr_of_a_known_error():
    target = random_images(2, 8, 8, seed=3).clamp(10, 245)
    pred = target.clone()
    pred[0] += 10  # every subpixel off by 10: mse 100
    pred[1, 0, 0, 0] += 5  # one subpixel off by 5: mse 25 / 192
    expected = [10 * math.log10(255**2 / 100), 10 * math.log10(255**2 / (25 / 192))]
    np.testing.assert_allclose(psnr(pred, target, per_image=True), expected)
    assert psnr(pred, target) == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("size", [3, 4, 6, 7, 16])
def test_ssim_of_identical_images_is_one_at_any_size(size):
    images = random_images(2, size, size + 1, seed=4)
    assert ssim(images, images) == pytest.approx(1.0)


def test_ssim_drops_with_noise_and_rejects_tiny_images():
    ramp = torch.arange(16) * 12 + 30  # smooth images: noise destroys their structure
    target = (ramp[:, None] + ramp[None, :] // 2).clamp(0, 255).to(torch.uint8).expand(2, 3, 16, 16)
    noise = torch.randint(-40, 41, target.shape, generator=torch.Generator().manual_seed(0))
    noisy = (target.int() + noise).clamp(0, 255).to(torch.uint8)
    values = ssim(noisy, target, per_image=True)
    assert values.shape == (2,) and (values < 0.95).all()
    with pytest.raises(ValueError, match="3x3"):
        ssim(target[..., :2, :2], target[..., :2, :2])
    with pytest.raises(ValueError, match="differ"):
        psnr(target[:1], target)


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------


def test_area_downscale_averages_each_block():
    image = torch.tensor([[10, 20, 0, 0], [30, 40, 0, 1], [255, 255, 1, 2], [255, 255, 2, 2]])
    images = image.to(torch.uint8).expand(2, 3, 4, 4)
    out = downscale_area(images, 2)
    assert out.shape == (2, 3, 2, 2) and out.dtype == torch.uint8
    # block means: 25, 0.25, 255, 1.75
    assert out[0, 0].tolist() == [[25, 0], [255, 2]]
    assert downscale_area(images, 2, rounding="floor")[0, 0].tolist() == [[25, 0], [255, 1]]
    # halves round up: mean of (0, 1, 0, 1) is 0.5
    half = torch.tensor([[0, 1], [0, 1]], dtype=torch.uint8).expand(1, 3, 2, 2)
    assert downscale_area(half, 2).flatten().tolist() == [1, 1, 1]


def test_area_downscale_matches_float_average_pooling():
    images = random_images(2, 8, 12, seed=6)
    expected = torch.nn.functional.avg_pool2d(images.double(), 4)
    out = downscale_area(images, 4)
    assert (out.double() - expected).abs().max() <= 0.5
    with pytest.raises(ValueError, match="divisible"):
        downscale_area(images, 5)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_upscales_have_the_right_shape(factor):
    images = random_images(2, 8, 6, seed=7)
    for upscale in (upscale_bicubic, upscale_nearest):
        out = upscale(images, factor)
        assert out.shape == (2, 3, 8 * factor, 6 * factor) and out.dtype == torch.uint8


def test_nearest_upscale_repeats_pixels_and_area_downscale_inverts_it():
    images = random_images(2, 5, 7, seed=8)
    up = upscale_nearest(images, 4)
    assert torch.equal(up, images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))
    assert torch.equal(downscale_area(up, 4), images)


def test_bicubic_upscale_keeps_constant_images_constant():
    images = torch.full((1, 3, 6, 6), 123, dtype=torch.uint8)
    assert torch.equal(upscale_bicubic(images, 3), torch.full((1, 3, 18, 18), 123).byte())


# ----------------------------------------------------------------------------------------------
# FID / KID / IS
# ----------------------------------------------------------------------------------------------


def random_spd(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_of_identical_statistics_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16))
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-6
    assert abs(fid_from_features(features, features)) <= 1e-6


def test_frechet_distance_matches_the_closed_forms():
    # 1D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s1, s2
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert fd == pytest.approx(9.0 + 1.0)
    # general: |dmu|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), with eigh-based roots
    s1, s2 = random_spd(8, 1), random_spd(8, 2)
    mu1, mu2 = np.arange(8.0), np.ones(8)
    root1 = _sqrt_psd(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _sqrt_psd(root1 @ s2 @ root1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_handles_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances
    features = np.random.default_rng(3).normal(size=(10, 32))
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-3
    assert np.isfinite(frechet_distance(mu, sigma, mu + 1, sigma))


def test_feature_statistics_shapes_and_errors():
    mu, sigma = feature_statistics(torch.randn(20, 5))
    assert mu.shape == (5,) and sigma.shape == (5, 5) and mu.dtype == np.float64
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted = rng.normal(size=(400, 16)) + 0.5
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    apart, _ = kernel_inception_distance(a, shifted, num_subsets=20, subset_size=200)
    assert abs(same) < 0.01 and same_std >= 0
    assert apart > 0.1 and apart > 20 * abs(same)
    # reproducible given the seed
    assert kernel_inception_distance(a, b, 5, 100, seed=1) == kernel_inception_distance(
        a, b, 5, 100, seed=1
    )
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(a, b, subset_size=1000)


def test_kid_matches_a_loop_reference_for_one_subset():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kid, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=6)
    assert kid == pytest.approx(xx + yy - 2 * xy) and std == 0.0


def test_inception_score_extremes():
    uniform = np.full((100, 10), 0.1)
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    one_hot = np.tile(np.eye(10), (5, 1))  # 50 rows, each split of 10 rows holds every class
    mean, std = inception_score(one_hot, splits=5)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0)
    assert inception_score(np.eye(7), splits=1)[0] == pytest.approx(7.0)
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.ones((20, 4)), splits=2)


def test_random_conv_features_are_deterministic_and_pluggable():
    images = random_images(6, 16, 16, seed=9)
    extractor = RandomConvFeatures(dim=64, seed=0)
    assert isinstance(extractor, FeatureExtractor)
    features = compute_features(extractor, images, batch_size=4)
    assert features.shape == (6, 64) and features.dtype == np.float64
    again = compute_features(RandomConvFeatures(dim=64, seed=0), images)
    np.testing.assert_allclose(features, again, rtol=1e-6)
    other_seed = compute_features(RandomConvFeatures(dim=64, seed=1), images)
    assert not np.allclose(features, other_seed)


def test_random_conv_fid_separates_different_image_distributions():
    extractor = RandomConvFeatures(dim=32, seed=0)
    noise_a = compute_features(extractor, random_images(64, 16, 16, seed=10))
    noise_b = compute_features(extractor, random_images(64, 16, 16, seed=11))
    dark = compute_features(extractor, random_images(64, 16, 16, seed=12) // 4)
    assert fid_from_features(noise_a, noise_b) < 0.1 * fid_from_features(noise_a, dark)


def test_inception_extractor_explains_what_to_install():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"imgtx\[fid\]"):
            inception_extractor()
    else:
        pytest.skip("torch-fidelity is installed; its weights may need a download")
    with pytest.raises(ValueError, match="feature must be"):
        inception_extractor(feature="pool3")
