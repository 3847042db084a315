"""ROAD: the CG imputation against a dense direct solve, and MoRF/LeRF orderings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_metrics_deletion import RegionModel, toy_batch

from netlens.metrics.road import RoadLerf, RoadMorf, impute_linear

WEIGHTS = {
    (dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx
}


def dense_imputation(img: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Build the ROAD system pixel by pixel and solve it with numpy (reference)."""
    h, w = missing.shape
    idx = {p: k for k, p in enumerate(zip(*np.nonzero(missing), strict=True))}
    a = np.zeros((len(idx), len(idx)))
    b = np.zeros((len(idx), img.shape[0]))
    for (y, x), k in idx.items():
        for (dy, dx), wt in WEIGHTS.items():
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                continue
            a[k, k] += wt
            if missing[yy, xx]:
                a[k, idx[(yy, xx)]] -= wt
            else:
                b[k] += wt * img[:, yy, xx]
    out = img.copy()
    sol = np.linalg.solve(a, b)
    for (y, x), k in idx.items():
        out[:, y, x] = sol[k]
    return out


def test_cg_imputation_matches_a_direct_solve() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((2, 6, 7))
    missing = rng.random((6, 7)) < 0.5
    missing[0, 0] = missing[2, 3] = True  # a corner and an interior pixel at least
    ref = dense_imputation(img, missing)
    got = impute_linear(torch.from_numpy(img), torch.from_numpy(missing), noise=0.0, tol=1e-12)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-9)
    assert np.array_equal(got.numpy()[:, ~missing], img[:, ~missing])  # kept pixels untouched


def test_imputation_is_batched_and_adds_the_noise() -> None:
    img = torch.zeros(4, 3, 16, 16, dtype=torch.float64)
    missing = torch.zeros(4, 16, 16, dtype=torch.bool)
    missing[:, 4:12, 4:12] = True
    out = impute_linear(img, missing, noise=0.01, seed=1)
    assert out[:, :, ~missing[0]].abs().max() == 0
    assert out[:, :, missing[0]].std().item() == pytest.approx(0.01, rel=0.1)


def test_road_orderings_on_a_known_region() -> None:
    model = RegionModel()
    x, good = toy_batch(2)
    morf_on = RoadMorf()(model, x, good, [1, 1], fractions=(0.2, 0.5, 0.8))
    morf_off = RoadMorf()(model, x, 1 - good, [1, 1], fractions=(0.2, 0.5, 0.8))
    lerf_on = RoadLerf()(model, x, good, [1, 1], fractions=(0.2, 0.5, 0.8))
    assert morf_on["curve"].shape == (2, 3)
    assert morf_on["score"].mean() < morf_on["baseline"].mean() < morf_off["score"].mean()
    assert lerf_on["score"].mean() > lerf_on["baseline"].mean()
    assert RoadMorf().cost(2, fractions=(0.2, 0.5, 0.8)) == 12
