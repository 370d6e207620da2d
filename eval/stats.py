"""Confidence intervals for per-image metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_and_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of a two-sided 95% Student-t confidence interval of the mean.

    ``half_width = t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof=1``). Report as ``mean ± half_width``.

    Args:
        values: ``(n,)`` per-image values (e.g. bits/dim of each image).

    Returns:
        ``(mean, half_width)``. With a single value the spread is unknown; the half-width is
        reported as 0.0 rather than NaN so tables stay printable.

    Raises:
        ValueError: no values, or non-finite values.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("mean_and_ci95 needs at least one value, got none")
    if not np.isfinite(array).all():
        raise ValueError("mean_and_ci95 got non-finite values (inf/NaN); filter them first")
    mean = float(array.mean())
    n = array.size
    if n < 2:
        return mean, 0.0
    standard_error = array.std(ddof=1) / np.sqrt(n)
    return mean, float(stats.t.ppf(0.975, df=n - 1) * standard_error)


def mean_pairwise_distance(images: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of distinct rows.

    Args:
        images: ``(n, ...)`` with ``n >= 2``; each row is flattened (e.g. ``(n, 3, H, W)`` pixels
            scaled to [0, 1]).

    Returns:
        ``sum_{i<j} |x_i - x_j| / (n (n - 1) / 2)``, computed in float64 from the Gram matrix.
    """
    rows = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    n = len(rows)
    if n < 2:
        raise ValueError(f"mean_pairwise_distance needs at least 2 rows, got {n}")
    squared_norms = (rows * rows).sum(axis=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * rows @ rows.T  # (n, n)
    upper = np.triu_indices(n, k=1)
    return float(np.sqrt(np.clip(squared[upper], 0.0, None)).mean())
