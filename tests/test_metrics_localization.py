"""Pointing game, energy in mask and their chance level, on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from netlens.errors import DataError
from netlens.metrics.localization import (
    EnergyInMask,
    PointingGame,
    energy_in_mask,
    mask_fraction,
    pointing_game,
)


def _square_mask(size: int = 20, lo: int = 5, hi: int = 10) -> np.ndarray:
    m = np.zeros((1, size, size), bool)
    m[0, lo:hi, lo:hi] = True
    return m


def test_pointing_hit_miss_and_tolerance() -> None:
    m = _square_mask()
    h = np.zeros((1, 20, 20), np.float32)
    h[0, 7, 7] = 1.0  # inside
    assert pointing_game(h, m).tolist() == [1.0]
    h = np.zeros((1, 20, 20), np.float32)
    h[0, 7, 12] = 1.0  # two columns right of the mask's last column (9)
    assert pointing_game(h, m).tolist() == [0.0]
    assert pointing_game(h, m, tolerance=1).tolist() == [0.0]
    assert pointing_game(h, m, tolerance=3).tolist() == [1.0]


def test_a_flat_map_points_nowhere() -> None:
    """An all-zero map ("no evidence") or a constant one has every pixel tied for the
    maximum; it scored a hit wherever the mask was. Like energy, it is left out (NaN)."""
    m = _square_mask()
    assert np.isnan(pointing_game(np.zeros((1, 20, 20), np.float32), m)).all()
    assert np.isnan(pointing_game(np.full((1, 20, 20), 0.3, np.float32), m, tolerance=2)).all()
    plateau = np.zeros((1, 20, 20), np.float32)
    plateau[0, 5:8, 5:8] = 1.0  # a tied peak that is not the whole map still counts
    assert pointing_game(plateau, m).tolist() == [1.0]


def test_energy_is_the_share_inside() -> None:
    m = _square_mask()
    h = np.zeros((1, 20, 20), np.float32)
    h[0, 6, 6] = 3.0  # inside
    h[0, 15, 15] = 1.0  # outside
    assert energy_in_mask(h, m) == pytest.approx([0.75])
    assert np.isnan(energy_in_mask(np.zeros_like(h), m)[0])


def test_chance_level_matches_random_maps() -> None:
    rng = np.random.default_rng(0)
    masks = np.repeat(_square_mask(20, 0, 10), 3000, axis=0)  # a quarter of the image
    assert mask_fraction(masks) == pytest.approx(np.full(3000, 0.25))
    maps = rng.random((3000, 20, 20)).astype(np.float32)
    assert pointing_game(maps, masks).mean() == pytest.approx(0.25, abs=0.03)
    assert energy_in_mask(maps, masks).mean() == pytest.approx(0.25, abs=0.01)


def test_metric_objects_return_score_and_chance() -> None:
    m = _square_mask()
    h = m.astype(np.float32)
    out = PointingGame()(None, None, h, [0], masks=m, tolerance=0)
    assert out["score"].tolist() == [1.0]
    assert out["baseline"] == pytest.approx([25 / 400])
    assert EnergyInMask()(None, None, h, [0], masks=m)["score"] == pytest.approx([1.0])
    with pytest.raises(DataError):
        PointingGame()(None, None, h, [0], masks=None)


def test_tolerance_is_a_euclidean_distance_and_grows_the_chance_level() -> None:
    """An ellipse-kernel dilation counted peaks 2.24 px away as hits at tolerance 2 (15.3 at
    15), and the chance level ignored the tolerance (0.016 where random peaks hit 0.12)."""
    from netlens.metrics.localization import PointingGame, pointing_game

    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:14, 10:14] = True
    for (dy, dx), tol, hit in [
        ((2, 0), 2, 1.0),
        ((2, 1), 2, 0.0),
        ((3, 3), 4, 0.0),
        ((0, 15), 15, 1.0),
    ]:
        heat = np.zeros((1, 40, 40), np.float32)
        heat[0, 13 + dy, 13 + dx] = 1.0  # distance from the mask's corner pixel (13, 13)
        assert pointing_game(heat, mask, tolerance=tol)[0] == hit, (dy, dx, tol)
    yy, xx = np.mgrid[:40, :40]
    near = np.zeros((40, 40), bool)  # a naive loop: every pixel within 5 px of a mask pixel
    for y, x in zip(*np.nonzero(mask[0]), strict=True):
        near |= (yy - y) ** 2 + (xx - x) ** 2 <= 25
    got = PointingGame()(None, None, np.zeros((1, 40, 40)), [0], masks=mask, tolerance=5)
    assert got["baseline"][0] == pytest.approx(near.mean())
