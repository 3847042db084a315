"""A skipped file is named once in its line (the decoder's message already names it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import netlens


def test_a_broken_file_is_named_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("circle", "square"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    broken = tmp_path / "square" / "broken.png"
    broken.write_bytes(b"not a png")
    res = netlens.load("zoo:shapes-allconv").run(
        "stats", tmp_path, layers="features", progress=False
    )
    (line,) = res.skipped
    assert line.count("broken.png") == 1 and "cannot decode" in line
