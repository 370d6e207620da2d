"""Spec for the GAN metrics: Fréchet distance, unbiased KID, extractors by name, the shipped feature
network (FID grows with blur and noise on real held-out images), the reference-statistics cache,
class accuracy, and ``evaluate_generator`` on fake generators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import nn

from imgtx.data import photo_patches
from imgtx.errors import UserError
from imgtx.eval.classifier import (
    class_accuracy,
    classifier_test_accuracy,
    digit_classifier,
    load_digits_split,
)
from imgtx.eval.features import (
    SmallFeatureNet,
    TorchScriptInception,
    compute_features,
    default_features_dir,
    get_extractor,
)
from imgtx.eval.fid import (
    cached_reference_statistics,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
)
from imgtx.gan.evaluate import evaluate_generator, reference_statistics, spread_indices

HAS_FEATURE_NET = (default_features_dir() / "model.safetensors").is_file()
needs_feature_net = pytest.mark.skipif(not HAS_FEATURE_NET, reason="feature net not trained yet")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGTX_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------------
# Fréchet distance and KID
# ----------------------------------------------------------------------------------------------


def test_frechet_distance_of_identical_statistics_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 12)) * np.arange(1, 13)
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_matches_the_diagonal_gaussian_closed_form():
    # For diagonal covariances: |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 with standard deviations s.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def test_kid_is_unbiased_against_the_closed_form_of_discrete_distributions():
    # X uniform on 3 points, Y uniform on 3 other points: the population MMD^2 is exact sums over
    # the supports. The mean of the estimator over many independent small samples must match it,
    # while the biased V-statistic (diagonal terms kept) misses it at this sample size.
    rng = np.random.default_rng(2)
    support_x, support_y = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) + 0.4
    exact = (_kernel(support_x, support_x).mean() + _kernel(support_y, support_y).mean()
             - 2 * _kernel(support_x, support_y).mean())  # fmt: skip
    m, trials = 5, 3000
    unbiased, biased = [], []
    for _ in range(trials):
        x, y = support_x[rng.integers(3, size=m)], support_y[rng.integers(3, size=m)]
        unbiased.append(kernel_inception_distance(x, y, num_subsets=1, subset_size=m)[0])
        biased.append(_kernel(x, x).mean() + _kernel(y, y).mean() - 2 * _kernel(x, y).mean())
    standard_error = np.std(unbiased) / np.sqrt(trials)
    assert abs(np.mean(unbiased) - exact) < 4 * standard_error
    assert abs(np.mean(biased) - exact) > 10 * standard_error


def test_kid_of_one_distribution_averages_to_zero():
    rng = np.random.default_rng(3)
    values = [
        kernel_inception_distance(rng.normal(size=(8, 4)), rng.normal(size=(8, 4)), 1, 8)[0]
        for _ in range(1500)
    ]
    assert abs(np.mean(values)) < 4 * np.std(values) / np.sqrt(len(values))


# ----------------------------------------------------------------------------------------------
# Extractors by name
# ----------------------------------------------------------------------------------------------


def test_unknown_and_unavailable_extractors_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown feature extractor"):
        get_extractor("vgg")
    with pytest.raises(UserError, match="not found"):
        get_extractor(f"inception:{tmp_path / 'missing.pt'}")
    not_a_module = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, not_a_module)
    with pytest.raises(UserError, match="TorchScript"):
        get_extractor(f"inception:{not_a_module}")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="torch-fidelity"):
            get_extractor("inception")
    with pytest.raises(UserError, match="no feature network"):
        get_extractor(f"imgtx-small:{tmp_path}")


class _FakeScriptedInception(nn.Module):
    """Same call signature as StyleGAN2-ADA's TorchScript Inception."""

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        pooled = x.float().mean(dim=(2, 3))  # (B, 3)
        if return_features:
            return pooled.repeat(1, 683)[:, :2048]  # (B, 2048)
        return pooled.repeat(1, 336).softmax(dim=-1)  # (B, 1008)


def test_torchscript_inception_file_is_loaded_without_torchvision(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_FakeScriptedInception()).save(str(path))
    extractor = get_extractor(f"inception:{path}")
    assert isinstance(extractor, TorchScriptInception)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    assert compute_features(extractor, images, batch_size=2).shape == (5, 2048)
    probs = extractor.probabilities(images)
    assert probs.shape == (5, 1008) and torch.allclose(probs.sum(-1), torch.ones(5))


@needs_feature_net
def test_shipped_feature_net_loads_strictly_and_is_small():
    net = get_extractor("imgtx-small")
    assert isinstance(net, SmallFeatureNet) and net.dim == 128
    size = (default_features_dir() / "model.safetensors").stat().st_size
    assert size < 2 * 1024 * 1024
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert net(images).shape == (4, 128)
    assert torch.allclose(net.probabilities(images).sum(-1), torch.ones(4), atol=1e-5)
    assert net.card["digits_test_accuracy"] >= 0.97


# ----------------------------------------------------------------------------------------------
# The shipped feature network sees degradation of real held-out images
# ----------------------------------------------------------------------------------------------


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return images
    sigmas = (0, 0, sigma, sigma)  # blur height and width only
    out = scipy.ndimage.gaussian_filter(images.double().numpy(), sigmas, mode="reflect")
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _noise(images: torch.Tensor, std: float) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)) * std
    return (images.double() + noise).round().clamp(0, 255).to(torch.uint8)


@needs_feature_net
@pytest.mark.parametrize("degrade, levels", [(_blur, [0, 0.8, 1.5, 2.0]), (_noise, [0, 8, 20, 40])])
def test_feature_net_fid_grows_with_blur_and_noise_on_held_out_photos(degrade, levels):
    # Two disjoint halves of builtin:photos32 test (photos the net never saw): FID(half A, degraded
    # half B) must rise with every level. Blur sigma 0.5 or noise std 4 sit below the sampling
    # floor of ~200 images (FID of A against clean B), so the levels start at visible strengths.
    net = get_extractor("imgtx-small")
    images = photo_patches("test", 32).images  # (395, 3, 32, 32)
    reference = compute_features(net, images[:196])
    held_out = images[196:]
    fids = [fid_from_features(reference, compute_features(net, degrade(held_out, level)))
            for level in levels]  # fmt: skip
    assert all(b > 1.1 * a for a, b in zip(fids, fids[1:])), fids
    assert fids[-1] > 2.5 * fids[0], fids


# ----------------------------------------------------------------------------------------------
# Reference-statistics cache
# ----------------------------------------------------------------------------------------------


def test_cached_statistics_are_computed_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.random.default_rng(len(calls)).normal(size=(20, 3))

    key = {"data": "d", "split": "test", "features": "random", "count": 20}
    first = cached_reference_statistics(key, compute)
    second = cached_reference_statistics(key, compute)
    assert not first.from_cache and second.from_cache and len(calls) == 1
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.sigma, second.sigma)
    other = cached_reference_statistics({**key, "split": "train"}, compute)
    assert not other.from_cache and len(calls) == 2
    assert not cached_reference_statistics(key, compute, use_cache=False).from_cache
    files = list((tmp_path / "cache" / "fid_stats").glob("*.npz"))
    assert len(files) == 2 and not list(files[0].parent.glob("*.tmp"))


def test_reference_statistics_of_real_images_hit_the_cache_and_are_keyed_by_count():
    extractor = get_extractor("random")
    args = ("builtin:photos32", "test", 32)
    first = reference_statistics(*args, 40, "random", extractor)
    second = reference_statistics(*args, 40, "random", extractor)
    fewer = reference_statistics(*args, 30, "random", extractor)
    assert not first.from_cache and second.from_cache and not fewer.from_cache
    assert len(second.features) == 40 and len(fewer.features) == 30
    everything = reference_statistics(*args, 10_000, "random", extractor)
    assert len(everything.features) == 395  # the split has fewer: all of it is used
    # The rows are spread over the split, not its first rows (a split stored photo by photo
    # would otherwise give a one-photo reference).
    np.testing.assert_allclose(fewer.features, everything.features[spread_indices(395, 30)],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(fewer.features, everything.features[:30])


def test_spread_indices_cover_the_split_evenly():
    assert spread_indices(5, 10) == [0, 1, 2, 3, 4]
    picked = spread_indices(10_635, 512)
    assert len(set(picked)) == 512 and picked == sorted(picked) and picked[0] == 0
    gaps = np.diff(picked)
    assert gaps.min() >= 20 and gaps.max() <= 21 and picked[-1] >= 10_635 - 21


# ----------------------------------------------------------------------------------------------
# Class accuracy
# ----------------------------------------------------------------------------------------------


@needs_feature_net
def test_class_accuracy_of_real_test_digits_is_the_classifier_test_accuracy():
    images, labels = load_digits_split("test", 32)
    classifier = digit_classifier()
    accuracy = class_accuracy(images, labels, classifier)
    assert accuracy == pytest.approx(classifier_test_accuracy(classifier), abs=1.01 / len(labels))
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert 0.03 < class_accuracy(images, shuffled, classifier) < 0.2


# ----------------------------------------------------------------------------------------------
# evaluate_generator on fake generators
# ----------------------------------------------------------------------------------------------


@dataclass
class FakeConfig:
    image_size: int = 32
    num_classes: int = 0


class FakeGenerator(nn.Module):
    """Untrained (``trained == 0``): uniform noise. Trained: real images, of the asked class."""

    def __init__(self, config: FakeConfig):
        super().__init__()
        self.config = config
        self.register_buffer("trained", torch.zeros(()))
        self.offset = nn.Parameter(torch.randn(()))  # differs with the init seed
        if config.num_classes:
            self.pool, self.pool_labels = load_digits_split("train", config.image_size)
        else:
            self.pool, self.pool_labels = photo_patches("train", config.image_size).images, None

    def generate(self, num: int, labels=None, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if not self.trained:
            shape = (num, 3, self.config.image_size, self.config.image_size)
            return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        picks = []
        for index in range(num):
            allowed = torch.arange(len(self.pool))
            if labels is not None:
                allowed = allowed[self.pool_labels == int(labels[index])]
            picks.append(allowed[torch.randint(len(allowed), (1,), generator=generator)])
        return self.pool[torch.cat(picks)]


def test_evaluate_generator_reports_metrics_and_baselines():
    generator = FakeGenerator(FakeConfig())
    generator.trained.fill_(1)
    result = evaluate_generator(generator, "builtin:photos32", num_samples=64, features="random",
                                baselines=True, batch_size=32)  # fmt: skip
    for key in ("fid", "kid", "kid_std", "num_samples", "num_real", "features",
                "untrained_fid", "untrained_kid", "untrained_kid_std", "floor_fid"):  # fmt: skip
        assert key in result
    assert result["num_samples"] == result["num_real"] == 64 and result["features"] == "random"
    assert result["untrained_fid"] > 2 * result["fid"]
    assert result["num_floor"] == 64 and result["floor_fid"] < result["untrained_fid"]
    assert "is" not in result and "class_accuracy" not in result
    again = evaluate_generator(generator, "builtin:photos32", num_samples=64, features="random",
                               batch_size=32)  # fmt: skip
    assert again["fid"] == pytest.approx(result["fid"])  # same seed, cached reference


@needs_feature_net
def test_evaluate_conditional_generator_reports_class_accuracy():
    generator = FakeGenerator(FakeConfig(num_classes=10))
    generator.trained.fill_(1)
    result = evaluate_generator(generator, "builtin:digits", num_samples=100, baselines=True,
                                batch_size=50)  # fmt: skip
    assert result["class_accuracy"] > 0.9 and result["untrained_class_accuracy"] < 0.3
    assert result["classifier_test_accuracy"] >= 0.97
    assert result["floor_fid"] < result["untrained_fid"] and result["fid"] < result["untrained_fid"]
    assert result["is"] > 5 and "class_accuracy_caveat" not in result


def test_kid_std_is_a_real_spread_below_2000_samples():
    """With 512 fakes and 395 reals (the shipped photos32 check), subsets must differ from each
    other, or kid_std is 0 and `kid + 2 kid_std` says nothing."""
    import numpy as np

    from imgtx.eval.fid import ReferenceStatistics, feature_statistics
    from imgtx.gan.evaluate import _distances

    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(512, 16)), rng.normal(0.3, 1.0, size=(395, 16))
    mu, sigma = feature_statistics(real)
    reference = ReferenceStatistics(features=real, mu=mu, sigma=sigma, key={"data": "test"})
    result = _distances(fake, reference, seed=0)
    assert result["kid_std"] > 1e-4
    assert result["kid"] > 0


@needs_feature_net
def test_conditional_generator_on_unlabelled_data_skips_the_per_class_figures():
    """A generator conditioned on labels the eval data does not carry (strans-corpus32: the
    source photo; runs/photo_corpus: unlabelled crops) is scored on its samples, with the
    per-class figures skipped and said so, instead of failing; on labelled data they are made."""
    generator = FakeGenerator(FakeConfig(num_classes=10))
    generator.trained.fill_(1)
    result = evaluate_generator(generator, "builtin:photos32", num_samples=50, batch_size=50,
                                variety_per_class=20)  # fmt: skip
    assert "has no class labels" in result["class_variety_skipped"]
    assert "variety_ratio" not in result and result["fid"] >= 0
    assert "class_accuracy_caveat" in result
    labelled = evaluate_generator(generator, "builtin:digits", num_samples=50, batch_size=50,
                                  variety_per_class=20)  # fmt: skip
    assert len(labelled["variety_ratio"]) == 10 and "class_variety_skipped" not in labelled
