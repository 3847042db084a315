"""The figures of a top-activations Result: the inputs that excite each channel most.

Pure: arrays in, figures out (see :mod:`netlens.analyzers.top_activations` for the arrays).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..output import layer_stem
from .grids import crop_patches, grid_figure, mark_patches

__all__ = ["top_figures"]


def top_figures(a: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, Figure]:
    """The top inputs per channel with their receptive-field boxes (map cells when
    ``meta["boxes"]`` says the gradients could not be taken), and the patches alone."""
    s, k = a["images"].shape[:2]
    images = a["images"].reshape(s * k, *a["images"].shape[2:])
    boxes = a["boxes"].reshape(s * k, 4)
    labels = [f"ch {c} #{r + 1}: {a['scores'][c, r]:.3g}" for c in a["channels"] for r in range(k)]
    head = f"{meta['layer']}: top {k} of {meta['samples']} inputs per channel (rows); "
    stem = f"top-{layer_stem(meta['layer'])}"
    if meta.get("boxes") == "cells":  # no gradient reached the layer (see the warning)
        marked = (
            "label = channel, rank: peak activation\nbox = the map cell of the peak unit "
            "(the layer has no gradients: not its receptive field)"
        )
        cropped = "the map cells only\n(true size, centred; label = channel, rank: peak activation)"
    else:
        marked = (
            "label = channel, rank: peak activation\nbright box = receptive field of the peak "
            "unit (gradient support)"
        )
        cropped = (
            "the receptive-field patches only\n(true size, centred; label = channel, rank: "
            "peak activation)"
        )
    views = {
        stem: (mark_patches(images, boxes), marked, 1.3),
        f"{stem}-patches": (crop_patches(images, boxes), cropped, 1.0),
    }
    return {
        name: grid_figure(tiles, labels, title=head + what, cols=k, tile_inches=inches)[0]
        for name, (tiles, what, inches) in views.items()
    }
