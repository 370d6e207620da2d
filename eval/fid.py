"""GAN metrics core: FID, KID and IS from features, with a pluggable feature extractor.

The standard numbers (FID/IS/KID as papers report them) need TF-compatible Inception weights,
available through torch-fidelity (``pip install 'imgtx[fid]'``, which also needs torchvision).
Everything else here is plain numpy/scipy, so the metrics themselves are tested on CPU with a small
deterministic network (``RandomConvFeatures``). Numbers from different extractors are not
comparable. Sources: Heusel et al. 2017 (FID), Bińkowski et al. 2018 (KID), Salimans et al. 2016
(IS); DESIGN §7.
"""

from __future__ import annotations

import math
import warnings
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import torch
from scipy.special import xlogy
from torch import nn

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps a uint8 batch ``(B, 3, H, W)`` to float features ``(B, dim)``."""

    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class RandomConvFeatures(nn.Module):
    """A tiny fixed random conv net; deterministic given ``seed``. For tests and smoke runs only.

    Three 3x3 convolutions (stride 2, 2, 1; He-scaled Gaussian weights from a seeded generator,
    zero biases) with ReLU, then a global average pool: ``(B, 3, H, W)`` uint8 -> ``(B, dim)``.
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__()
        self.dim = dim
        generator = torch.Generator().manual_seed(seed)
        widths = [3, 16, 32, dim]
        strides = [2, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides):
            conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
            with torch.no_grad():
                std = math.sqrt(2.0 / (c_in * 9))
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, dim)`` float32."""
        x = images.to(self.net[0].weight.device, torch.float32) / 127.5 - 1.0  # (B, 3, H, W)
        return self.net(x).mean(dim=(2, 3))  # (B, dim)


# Output width of each torch-fidelity InceptionV3 feature.
_INCEPTION_DIMS = {
    "64": 64,
    "192": 192,
    "768": 768,
    "2048": 2048,
    "logits_unbiased": 1008,
    "logits": 1008,
}


class InceptionFeatures:
    """torch-fidelity's TF-compatible InceptionV3 behind the ``FeatureExtractor`` protocol."""

    def __init__(self, network: nn.Module, feature: str):
        self.network = network
        self.feature = feature
        self.dim = _INCEPTION_DIMS[feature]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 (any size; resized to 299 inside) -> ``(B, dim)`` float32."""
        (features,) = self.network(images)
        return features.reshape(len(images), -1).float()


def inception_extractor(
    feature: str = "2048", device: str | torch.device = "cpu"
) -> InceptionFeatures:
    """TF-Inception features via torch-fidelity, as used for published FID/KID/IS.

    Args:
        feature: ``"2048"`` (pool features, for FID/KID) or ``"logits_unbiased"`` (for IS, after a
            softmax); also ``"64"``, ``"192"``, ``"768"``, ``"logits"``.
        device: where to run the network.

    Returns:
        A ``FeatureExtractor``. torch-fidelity downloads its weights on first use.

    Raises:
        ImportError: torch-fidelity (or torchvision, which it imports) is missing.
    """
    if feature not in _INCEPTION_DIMS:
        raise ValueError(f"feature must be one of {sorted(_INCEPTION_DIMS)}, got {feature!r}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:
        raise ImportError(
            "Inception features need torch-fidelity, which also needs torchvision: "
            "`pip install 'imgtx[fid]'` on a machine where torchvision installs. For tests or "
            "smoke runs use imgtx.eval.fid.RandomConvFeatures (its numbers are not comparable to "
            f"published FID). Import error: {error}"
        ) from error
    network = FeatureExtractorInceptionV3("inception-v3-compat", [feature]).to(device).eval()
    return InceptionFeatures(network, feature)


@torch.no_grad()
def compute_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Run ``extractor`` over ``(N, 3, H, W)`` uint8 images in batches -> ``(N, dim)`` float64."""
    chunks = [extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).double().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``ddof=1``) of features.

    Args:
        features: ``(N, D)`` with ``N >= 2``.

    Returns:
        ``mu (D,)`` and ``sigma (D, D)``, float64.
    """
    features = _as_float64(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6
) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})``, with the matrix square root
    from ``scipy.linalg.sqrtm``. If scipy reports the product singular, or the root is not
    finite, ``eps * I`` is added to both covariances and the root retaken (the usual FID
    fallback; it happens with fewer samples than feature dimensions, or with dead features).
    Small imaginary parts from rounding are dropped; large ones raise.

    Args:
        mu1, mu2: ``(D,)``.
        sigma1, sigma2: ``(D, D)``.
        eps: diagonal offset for the singular fallback.

    Returns:
        The distance (FID when the statistics come from Inception pool features).
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1),) * 2:
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}; expected (D,) means and (D, D) covariances"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    singular = False
    for caught_warning in caught:
        if issubclass(caught_warning.category, scipy.linalg.LinAlgWarning):
            singular = True
        else:  # not ours to swallow
            warnings.warn_explicit(
                caught_warning.message,
                caught_warning.category,
                caught_warning.filename,
                caught_warning.lineno,
            )
    if singular or not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(
                f"matrix square root has a large imaginary part ({largest:.3g}); the covariances "
                "are far from positive semi-definite. Use more samples than feature dimensions."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """Fréchet distance between the Gaussian fits of two ``(N, D)`` feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


# ----------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with kernel k(a, b) = (a.b / dim + 1)^3 between equal-size sets (m, dim)."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: ArrayLike,
    features2: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased polynomial-kernel MMD^2 averaged over random subsets.

    Kernel ``(x.y / dim + 1)^3`` (degree 3, gamma 1/dim, coef0 1). Each subset draws
    ``subset_size`` rows without replacement from each set (seeded, so reproducible).
    The estimate is unbiased, so it can be slightly negative for identical distributions.

    Args:
        features1: ``(N1, D)``.
        features2: ``(N2, D)``.
        num_subsets: number of subsets to average.
        subset_size: rows per subset, at most ``min(N1, N2)``.
        seed: seed for the subset draws.

    Returns:
        ``(mean, std)`` of the per-subset MMD^2 values.
    """
    x, y = _as_float64(features1), _as_float64(features2)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {x.shape} and {y.shape}")
    if not 2 <= subset_size <= min(len(x), len(y)):
        raise ValueError(
            f"subset_size must be between 2 and the smaller sample size {min(len(x), len(y))}, "
            f"got {subset_size}; pass a smaller subset_size or more samples"
        )
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _polynomial_mmd2_unbiased(
                x[rng.choice(len(x), subset_size, replace=False)],
                y[rng.choice(len(y), subset_size, replace=False)],
            )
            for _ in range(num_subsets)
        ]
    )
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------------------------
# IS
# ----------------------------------------------------------------------------------------------


def inception_score(probs: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception score ``exp(E_x KL(p(y|x) || p(y)))`` over consecutive splits.

    Args:
        probs: ``(N, C)`` class probabilities (softmax outputs, rows sum to 1), ``N >= splits``.
        splits: the rows are cut into this many consecutive parts (``np.array_split``), each
            scored with its own marginal ``p(y)``.

    Returns:
        ``(mean, std)`` over splits. Uniform predictions score 1; confident predictions spread
        evenly over C classes score C.
    """
    p = _as_float64(probs)
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise ValueError(f"probs must be (N, C) with N >= splits={splits}, got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs rows must be probabilities summing to 1; apply softmax to logits")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)  # (1, C)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)  # (n,)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
