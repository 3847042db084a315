"""Summary statistics for per-image metric values: mean with a bootstrap confidence interval."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(
    values: Any, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float, int]:
    """Mean and percentile-bootstrap CI of the finite values: ``(mean, low, high, n)``.

    NaNs (e.g. energy of an all-zero map) are left out and ``n`` counts what was used.

    Example:
        >>> mean_ci([0, 1, 1, 1])
        (0.75, 0.25, 1.0, 4)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(v.mean()), float(lo), float(hi), int(v.size)
