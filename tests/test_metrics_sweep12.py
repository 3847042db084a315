"""Sweep 12 of evaluate / sanity: the pointing game scores a tied maximum by the share of its
pixels that hit (the expected hit of a random tie-break) and a non-finite map as NaN; one value
has no confidence interval (NaN bounds, sanity not settled) and a proportion takes the Wilson
interval; an (images, labels) pair takes a list of photos of mixed sizes, paths or PIL images,
read as lens.cam reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import netlens
from netlens.errors import DataError
from netlens.metrics.bootstrap import mean_ci
from netlens.metrics.localization import PointingGame, pointing_game
from netlens.testing import make_tiny_model

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


# -- pointing game ------------------------------------------------------------------------------
def naive_pointing(h: np.ndarray, m: np.ndarray, tolerance: float) -> float:
    """By hand: the pixels equal to the maximum, and the share of them within ``tolerance``
    (Euclidean, between pixel centres) of some mask pixel."""
    top = h.max()
    plateau = [(y, x) for y in range(h.shape[0]) for x in range(h.shape[1]) if h[y, x] == top]
    obj = np.argwhere(m)
    hits = [np.sqrt(((obj - (y, x)) ** 2).sum(axis=1)).min() <= tolerance for y, x in plateau]
    return float(np.mean(hits))


def coarse_maps(rng: np.random.Generator, n: int, cells: int, size: int) -> np.ndarray:
    """Coarse maps upsampled by nearest neighbour, as a CAM's plateaus: each map's maximum is
    one whole cell, picked uniformly (a map that knows nothing of where the object is)."""
    maps = rng.random((n, cells, cells)) * 0.5
    top = rng.integers(0, cells * cells, n)
    maps.reshape(n, -1)[np.arange(n), top] = 1.0
    block = np.ones((size // cells, size // cells))
    return np.stack([np.kron(mp, block) for mp in maps]).astype(np.float32)


@pytest.mark.parametrize("tolerance", [0, 3])
def test_a_tied_peak_scores_the_share_of_its_pixels_that_hit(tolerance: int) -> None:
    rng = np.random.default_rng(0)
    h = coarse_maps(rng, 12, 4, 32)
    m = np.zeros((12, 32, 32), bool)
    for i in range(12):
        y, x = rng.integers(0, 28, 2)
        m[i, y : y + 4, x : x + 4] = True
    got = pointing_game(h, m, tolerance=tolerance)
    want = [naive_pointing(h[i], m[i], tolerance) for i in range(12)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert any(0 < w < 1 for w in want)  # partial plateaus are in the test
    # a unique maximum still scores 0 or 1
    u = rng.random((6, 32, 32)).astype(np.float32)
    assert set(pointing_game(u, m[:6], tolerance=tolerance).tolist()) <= {0.0, 1.0}


def test_a_location_blind_map_scores_the_chance_level_on_average() -> None:
    rng = np.random.default_rng(1)
    n = 600
    h = coarse_maps(rng, n, 4, 32)  # 8×8 px plateaus
    m = np.zeros((n, 32, 32), bool)
    for i in range(n):
        y, x = rng.integers(0, 29, 2)
        m[i, y : y + 3, x : x + 3] = True
    out = PointingGame()(None, None, h, None, masks=m, tolerance=1)
    score, chance = out["score"], out["baseline"]
    se = score.std() / np.sqrt(n)
    assert abs(score.mean() - chance.mean()) < 4 * se + 1e-3
    assert score.mean() < 1.5 * chance.mean()  # any tied pixel a hit scored ~3× chance


def test_a_map_holding_nan_scores_nan_not_a_miss() -> None:
    rng = np.random.default_rng(2)
    h = rng.random((2, 16, 16)).astype(np.float32)
    m = np.zeros((2, 16, 16), bool)
    m[:, :8] = True
    h[1, 15, 15] = np.nan
    h[0, 15, 14] = np.inf
    assert np.isnan(pointing_game(h, m)).all()


# -- intervals ----------------------------------------------------------------------------------
def test_one_value_has_no_interval_and_a_proportion_takes_wilson() -> None:
    import scipy.stats as st

    from netlens.metrics.bootstrap import wilson_ci

    mean, lo, hi, n = mean_ci([0.3])
    assert (mean, n) == (0.3, 1) and np.isnan(lo) and np.isnan(hi)
    for hits, n in ((10, 10), (0, 7), (3, 4), (17, 40)):
        values = [1.0] * hits + [0.0] * (n - hits)
        ref = st.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        _, lo, hi, _ = mean_ci(values, proportion=True)
        assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
        assert wilson_ci(hits, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # not asked for, or not all 0/1: the bootstrap (ten equal values: zero width)
    assert mean_ci([1.0] * 10)[1:3] == (1.0, 1.0)
    _, lo, hi, _ = mean_ci([0.0, 0.5, 1.0, 1.0], proportion=True)
    assert 0.0 <= lo < hi <= 1.0


@pytest.fixture
def lens32() -> netlens.Lens:
    return netlens.load(make_tiny_model(3), input_size=32, classes=["a", "b", "c", "d"])


def test_one_image_is_no_settled_verdict_and_no_ci(lens32: netlens.Lens, tmp_path) -> None:
    from rich.console import Console

    from netlens.cli.tables import scores_table
    from netlens.render.quality_figures import scores_figure

    x = (torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).byte()
    v = lens32.run("sanity", x, method="gradcam").verdicts["gradcam"]
    assert v["passes"] is not None and v["settled"] is False
    assert np.isnan(v["final_spearman_low"]) and np.isnan(v["final_spearman_high"])
    assert "not settled" in v["verdict"] and "one image" in v["verdict"]
    res = lens32.evaluate((x, [1]), methods="gradcam", metrics="deletion", steps=4, limit=None)
    row = res.table[0]
    assert row["n"] == 1 and np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
    console = Console(file=None, record=True, width=120)
    console.print(scores_table(res.table))
    assert "(no CI)" in console.export_text()  # rich read "[nan, nan]" as markup, dropped it
    scores_figure(res.table)
    res.save(tmp_path)
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert any(r.get("ci_low", 0) is None for r in saved.get("table", []))


# -- (images, labels) with a list of photos ---------------------------------------------------
def photos(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        (rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((40, 56), (33, 33), (64, 48))
    ]


def test_a_pair_of_photo_lists_scores_as_its_preprocessed_tensor(
    lens32: netlens.Lens, tmp_path
) -> None:
    rng = np.random.default_rng(3)
    arrays = photos(rng)
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(a).save(paths[-1])
    labels = [0, 2, 1]
    stacked = torch.stack([lens32.transform(a) for a in arrays])  # each preprocessed by hand
    opts = {"methods": "gradcam", "metrics": "deletion,insertion", "steps": 4, "limit": None}
    ref = lens32.evaluate((stacked, labels), **opts).arrays
    pil = [Image.fromarray(a) for a in arrays]
    for given in (arrays, pil, [str(p) for p in paths], tuple(paths)):
        got = lens32.evaluate((given, labels), **opts).arrays
        for key in ("gradcam/deletion/score", "gradcam/insertion/score"):
            np.testing.assert_allclose(got[key], ref[key], atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("missing", "image 1 of the (images, labels) pair: image not found"),
        (None, "image 1 of the (images, labels) pair is a NoneType"),
        (np.zeros((2, 3, 4, 5), np.uint8), "image 1 of the (images, labels) pair: an image array"),
    ],
)
def test_a_bad_photo_in_a_pair_is_one_data_error_line(
    lens32: netlens.Lens, tmp_path, bad: object, says: str
) -> None:
    good = photos(np.random.default_rng(4))[0]
    bad = str(tmp_path / "nope.png") if isinstance(bad, str) else bad
    with pytest.raises(DataError) as err:
        lens32.evaluate(([good, bad], [0, 1]), methods="gradcam", metrics="deletion", steps=4)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_evaluate_gives_the_pointing_game_of_all_hits_a_wilson_interval() -> None:
    """Every image a hit: the bootstrap's interval is [1, 1]; evaluate's table now gives the
    pointing game the Wilson score interval of n hits out of n (scipy's binomtest)."""
    from scipy.stats import binomtest

    from netlens.analyzers.evaluate_notes import summary_rows

    n = 6
    arrays = {"gradcam/pointing/score": np.ones(n), "gradcam/pointing/baseline": np.full(n, 0.2)}
    lens = netlens.load(make_tiny_model(), input_size=(3, 16, 16))
    (row,) = summary_rows(lens, arrays, ["gradcam"], ["pointing"])
    want = binomtest(n, n).proportion_ci(0.95, method="wilson")
    assert row["ci_low"] == pytest.approx(want.low) and row["ci_high"] == pytest.approx(want.high)
    assert row["ci_high"] == 1.0 and row["ci_low"] < 0.65
