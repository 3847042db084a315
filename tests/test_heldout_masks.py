"""``evaluate`` given no data on a model trained on a folder reads the masks of its held-out
images from FOLDER_masks/ (or --masks) at their relative paths, as it does for the folder
itself: the pointing game equals a hand-computed one on the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import netlens

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

FAST = {"epochs": 1, "batch_size": 4, "img_size": 32, "quiet": True, "workers": 0, "threads": 1}


def test_evaluate_reads_the_held_out_images_masks(tmp_path: Path) -> None:
    data, masks = tmp_path / "pets", tmp_path / "pets_masks"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        (masks / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                data / name / f"{i}.png"
            )
            m = np.zeros((32, 32), np.uint8)
            m[: 16 if i % 2 else 32, :16] = 255  # a left half or top-left quarter
            Image.fromarray(m).save(masks / name / f"{i}.png")
    netlens.train("lenet5", str(data), out=str(tmp_path / "m.pt"), **FAST)
    lens = netlens.load(tmp_path / "m.pt")
    held = lens.default_data()
    res = lens.evaluate(methods="gradcam", metrics="pointing")
    row = next(r for r in res.table if r["metric"] == "pointing")
    assert row["n"] == len(held.files) == 2
    cams = lens.cam([str(f) for f in held.files], method="gradcam", target=held.labels.tolist())
    hits = []
    for f, heat in zip(held.files, np.asarray(cams.heatmaps), strict=True):
        mask = np.asarray(Image.open(masks / f.parent.name / f.name)) > 127
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits.append(float(mask[y, x]))
    assert row["mean"] == pytest.approx(np.mean(hits))
