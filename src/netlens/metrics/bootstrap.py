"""Bootstrap confidence intervals: the one implementation every netlens analysis uses.

A percentile bootstrap over images: ``resamples`` (default 2,000) sets of image indices drawn
with replacement from a seeded generator, the statistic computed on each, and the 2.5th and
97.5th percentiles (linear interpolation) taken as the 95% interval. :class:`Resampler` draws
the indices in fixed chunks of rows, each from its own seeded stream, so the same ``(n,
resamples, seed)`` always gives the same indices, however large ``n`` is, and memory stays
bounded. Paired comparisons (an ablated model against the intact one) use the very same
indices for both, so the interval of a difference is the interval of per-resample differences.

One value has no spread to resample: :func:`mean_ci` gives NaN bounds below two values (a
table prints them as not available, never as a zero-width interval). A proportion (per-image
values that are all 0 or 1, asked for with ``proportion=True``) takes the Wilson score interval
instead, which stays honest where every value is the same (ten hits out of ten: [0.72, 1],
where the bootstrap's would be [1, 1]).

Example:
    >>> mean_ci([0, 1, 1, 1])
    (0.75, 0.25, 1.0, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["LEVEL", "RESAMPLES", "Resampler", "mean_ci", "percentile_ci", "wilson_ci"]

#: Resamples for every bootstrap interval netlens reports.
RESAMPLES = 2000
#: Coverage of every interval netlens reports.
LEVEL = 0.95

_CHUNK = 1 << 22  # index entries drawn at once (32 MB of int64)
_KEEP = 1 << 24  # index entries kept between uses (128 MB); more are drawn again each time

Statistic = Callable[[np.ndarray], np.ndarray]


class Resampler:
    """Seeded bootstrap indices over ``n`` items, drawn in fixed chunks of rows.

    Args:
        n: how many items (images) there are.
        resamples: how many resamples (rows).
        seed: the seed; chunk ``i`` is drawn from ``default_rng([seed, i])``.

    Example:
        >>> r = Resampler(4, resamples=3)
        >>> r.apply(lambda idx: idx.shape[1] * np.ones(len(idx))).tolist()
        [4.0, 4.0, 4.0]
    """

    def __init__(self, n: int, resamples: int = RESAMPLES, seed: int = 0) -> None:
        if n < 1 or resamples < 1:
            raise ValueError("a bootstrap needs at least one item and one resample")
        self.n, self.resamples, self.seed = n, resamples, seed
        self.rows = max(1, min(resamples, _CHUNK // n))
        self._kept: list[np.ndarray] | None = None

    def chunks(self) -> Iterator[np.ndarray]:
        """The index rows, chunk by chunk (each ``rows × n``)."""
        if self._kept is not None:
            yield from self._kept
            return
        keep = self.resamples * self.n <= _KEEP
        kept = []
        for i, start in enumerate(range(0, self.resamples, self.rows)):
            size = min(self.rows, self.resamples - start)
            idx = np.random.default_rng([self.seed, i]).integers(0, self.n, size=(size, self.n))
            if keep:
                kept.append(idx)
            yield idx
        self._kept = kept if keep else None

    def apply(self, statistic: Statistic) -> np.ndarray:
        """``statistic(idx)`` (one value per row of ``idx``) over every resample."""
        return np.concatenate(
            [np.asarray(statistic(idx), dtype=np.float64) for idx in self.chunks()]
        )


def percentile_ci(samples: Any, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (NaN, NaN when there are none)."""
    s = np.asarray(samples, dtype=np.float64)
    if s.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(s, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilson_ci(hits: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion: ``hits`` successes (may be fractional, an
    expected count) out of ``n`` trials (NaN, NaN when ``n`` is 0)."""
    from statistics import NormalDist

    if n < 1:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = min(max(hits / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def mean_ci(
    values: Any,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
    proportion: bool = False,
) -> tuple[float, float, float, int]:
    """Mean and percentile-bootstrap CI of the finite values: ``(mean, low, high, n)``.

    NaNs (e.g. energy of an all-zero map) are left out and ``n`` counts what was used. Below
    two values there is no interval: ``low`` and ``high`` are NaN. ``proportion``: the values
    are hits (0 or 1): where they all are, the Wilson score interval replaces the bootstrap
    (other values, such as a tied peak's share, keep the bootstrap).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(np.clip(v.mean(), v.min(), v.max()))
    if v.size < 2:
        return mean, float("nan"), float("nan"), int(v.size)
    if proportion and bool(np.isin(v, (0.0, 1.0)).all()):
        lo, hi = wilson_ci(float(v.sum()), int(v.size), level)
        return mean, lo, hi, int(v.size)
    means = Resampler(v.size, resamples, seed).apply(lambda idx: v[idx].mean(axis=1))
    lo, hi = percentile_ci(means, level)
    # a resample's mean lies within the values; summation rounding (1.0000000000000002 for
    # a correlation of ones) must not put a bound outside them
    lo, hi = (float(np.clip(b, v.min(), v.max())) for b in (lo, hi))
    return mean, lo, hi, int(v.size)
