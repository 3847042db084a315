"""Documented calls that a docs sweep found failing as written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netlens
from netlens.errors import NetlensError
from netlens.testing import TinyCNN

pytestmark = [pytest.mark.usefixtures("one_thread")]


def test_denormalize_takes_what_preprocess_gives() -> None:
    """docs/preprocessing.md: `lens.transform.denormalize(lens.preprocess(img))` raised numpy's
    "axes don't match array" on the 1×C×H×W batch preprocess returns."""
    lens = netlens.Lens(TinyCNN().eval())
    img = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    x = lens.preprocess([img])
    assert x.shape[0] == 1
    assert np.array_equal(lens.transform.denormalize(x), lens.transform.denormalize(x[0]))
    with pytest.raises(NetlensError, match="one image"):
        lens.transform.denormalize(torch.cat([x, x]))


def test_show_outside_jupyter_prints_the_pages_pictures(tmp_path, capsys) -> None:
    """docs/report.md: `res.show(page=2)` is the next page; outside Jupyter it printed the first
    page's pictures whatever the page."""
    lens = netlens.Lens(TinyCNN().eval())
    res = lens.cam(torch.rand(5, 3, 32, 32))
    paths = res.show(page=2, per_page=4, out=tmp_path / "o")
    out = capsys.readouterr().out
    pictures = [str(p) for p in paths if p.suffix == ".png"]
    printed = [x.strip() for x in out.splitlines() if x.strip().endswith(".png")]
    assert len(pictures) > 4 and "page 2 of" in out
    assert printed == pictures[4:8]
