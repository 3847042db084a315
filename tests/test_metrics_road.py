"""ROAD: the imputation against direct solves, batching, and the MoRF/LeRF orderings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve
from test_metrics_deletion import RegionModel, toy_batch

from netlens.metrics.perturb import pixel_ranks
from netlens.metrics.road import RoadLerf, RoadMorf, impute_linear, road_curves

WEIGHTS = {
    (dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx
}


def dense_imputation(img: np.ndarray, missing: np.ndarray, sparse: bool = False) -> np.ndarray:
    """Build the ROAD system pixel by pixel and solve it with numpy or scipy (reference)."""
    h, w = missing.shape
    idx = {p: k for k, p in enumerate(zip(*np.nonzero(missing), strict=True))}
    a = lil_matrix((len(idx), len(idx))) if sparse else np.zeros((len(idx), len(idx)))
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
    sol = spsolve(a.tocsc(), b) if sparse else np.linalg.solve(a, b)
    for (y, x), k in idx.items():
        out[:, y, x] = sol[k]
    return out


def test_imputation_matches_a_dense_direct_solve() -> None:
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


def blob_heatmap(size: int, seed: int) -> np.ndarray:
    """A smooth random heatmap (a CAM-like 8×8 grid upsampled): large connected holes."""
    low = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")[0, 0].numpy()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("kind", ["heatmap", "random"])
def test_float32_imputation_of_a_64px_image_is_within_1e4_of_a_sparse_solve(
    fraction: float, kind: str
) -> None:
    rng = np.random.default_rng(3)
    img = rng.random((3, 64, 64)) * 2 - 1
    ranks = pixel_ranks(blob_heatmap(64, 1)) if kind == "heatmap" else rng.permutation(4096)
    missing = np.asarray(ranks).reshape(64, 64) < round(fraction * 4096)
    ref = dense_imputation(img, missing, sparse=True)
    got = impute_linear(torch.from_numpy(img).float(), torch.from_numpy(missing), noise=0.0)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)


def test_batched_road_curves_equal_one_image_at_a_time() -> None:
    model = RegionModel()
    x, good = toy_batch(3)
    heat = good + 0.2 * np.random.default_rng(0).random(good.shape).astype(np.float32)
    fr = (0.25, 0.5, 0.75)
    for order in ("morf", "lerf", "random"):
        got = road_curves(model, x, heat, [1, 0, 1], order=order, fractions=fr, batch_size=4)
        for i, t in enumerate([1, 0, 1]):
            ranks = torch.as_tensor(
                np.random.default_rng(i).permutation(x[0, 0].numel()).reshape(x.shape[-2:])
                if order == "random"
                else pixel_ranks(heat[i], seed=i)
            )
            counts = torch.tensor([round(f * ranks.numel()) for f in fr]).view(-1, 1, 1)
            removed = ranks < counts if order != "lerf" else ranks >= ranks.numel() - counts
            imputed = impute_linear(x[i].expand(3, *x.shape[1:]), removed, seed=i)
            with torch.no_grad():
                ref = torch.softmax(model(imputed), dim=1)[:, t].numpy()
            np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-6)


def test_morf_and_lerf_share_the_random_baseline_of_a_batch() -> None:
    model = RegionModel()
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    x, good = toy_batch(2)
    shared: dict = {}
    morf = RoadMorf()(model, x, good, [1, 1], fractions=(0.3, 0.6), shared=shared)
    lerf = RoadLerf()(model, x, good, [1, 1], fractions=(0.3, 0.6), shared=shared)
    assert sum(calls) == 2 * 2 * 3  # MoRF, its baseline, LeRF: 2 images × 2 fractions each
    alone = RoadLerf()(model, x, good, [1, 1], fractions=(0.3, 0.6))
    np.testing.assert_array_equal(lerf["baseline"], morf["baseline"])
    np.testing.assert_allclose(alone["baseline"], lerf["baseline"], rtol=1e-6)
