"""GAN metrics core: FID, KID and IS from features, and a disk cache of reference statistics.

Feature extractors (Inception, the shipped ``imgtx-small`` network, a random one for tests) live
in :mod:`imgtx.eval.features` and are re-exported here. Everything in this file is plain
numpy/scipy. Numbers from different extractors are not comparable. Sources: Heusel et al. 2017
(FID), Bińkowski et al. 2018 (KID, "Demystifying MMD GANs", unbiased MMD^2 with the cubic
polynomial kernel), Salimans et al. 2016 (IS).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from scipy.special import xlogy

from imgtx.eval.features import (
    FeatureExtractor,
    InceptionFeatures,
    RandomConvFeatures,
    compute_features,
    get_extractor,
    inception_extractor,
)

__all__ = [
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomConvFeatures",
    "ReferenceStatistics",
    "cached_reference_statistics",
    "compute_features",
    "feature_statistics",
    "fid_from_features",
    "fid_stats_dir",
    "frechet_distance",
    "get_extractor",
    "inception_extractor",
    "inception_score",
    "kernel_inception_distance",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


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


# ----------------------------------------------------------------------------------------------
# Reference statistics cached on disk
# ----------------------------------------------------------------------------------------------


@dataclass
class ReferenceStatistics:
    """Features of a set of real images and their Gaussian fit.

    ``features``: ``(N, D)`` float64 (kept for KID); ``mu (D,)``; ``sigma (D, D)``;
    ``key``: what was measured; ``from_cache``: whether it was read from disk.
    """

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    key: dict[str, Any]
    from_cache: bool = False


def fid_stats_dir() -> Path:
    """``$IMGTX_CACHE/fid_stats`` if ``IMGTX_CACHE`` is set, else ``~/.cache/imgtx/fid_stats``."""
    root = os.environ.get("IMGTX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "imgtx") / "fid_stats"


def _cache_file(key: dict[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    readable = "_".join(str(key.get(k, "")) for k in ("data", "split", "features", "count"))
    readable = "".join(c if c.isalnum() or c in "-_." else "-" for c in readable)[:80]
    return fid_stats_dir() / f"{readable}_{digest}.npz"


def cached_reference_statistics(
    key: dict[str, Any], compute: Callable[[], np.ndarray], use_cache: bool = True
) -> ReferenceStatistics:
    """Reference features and statistics for ``key``, from the disk cache or computed.

    Args:
        key: JSON-serialisable description of what is measured; it should name the data spec,
            split, image size, extractor (with a fingerprint of its weights) and image count.
            Any change in it gives a different cache file.
        compute: called on a miss; returns the ``(N, D)`` features.
        use_cache: ``False`` computes and neither reads nor writes the cache.

    Returns:
        :class:`ReferenceStatistics`. Files are ``.npz`` (``features``, ``mu``, ``sigma``,
        ``key``) under :func:`fid_stats_dir`, written atomically (temp file + rename), so
        concurrent runs never read a half-written file.
    """
    path = _cache_file(key)
    if use_cache and path.is_file():
        with np.load(path) as stored:
            if json.loads(str(stored["key"])) == json.loads(json.dumps(key)):
                return ReferenceStatistics(
                    stored["features"], stored["mu"], stored["sigma"], key, from_cache=True
                )
    features = _as_float64(compute())
    mu, sigma = feature_statistics(features)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, features=features, mu=mu, sigma=sigma,
                         key=np.array(json.dumps(key, sort_keys=True)))  # fmt: skip
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    return ReferenceStatistics(features, mu, sigma, key)
