"""What ``evaluate`` warns of: scores that say nothing of a map. Flat maps (one value
everywhere), which pointing and energy leave out and deletion, insertion and ROAD take in random
pixel order; targets of negligible probability on the intact image (below a tenth of chance);
masks empty at the model's input; a ``masks`` folder the data does not use; metrics that
scored no image at all."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..metrics.perturb import flat_maps

__all__ = [
    "LOCAL",
    "ORDERED",
    "empty_mask_warning",
    "flat_maps",
    "flat_warnings",
    "negligible",
    "negligible_warning",
    "target_probs",
    "unscored_warning",
    "unused_masks_warning",
]

LOCAL = ("pointing", "energy")  # scored from the map and the mask alone
ORDERED = ("deletion", "insertion", "road-morf", "road-lerf")  # a pixel order, from the map


def empty_mask_warning(
    arrays: dict[str, np.ndarray],
    methods: list[str],
    metrics: list[str],
    names: Any = None,
) -> list[str]:
    """One line when some masks are empty at the model's input: those images are left out of
    the localisation metrics (NaN), which the table's ``n`` counts. ``names(rows)``: the
    images of those rows of the arrays, named in the line (the first five, then a count)."""
    base = next((arrays[f"{methods[0]}/{m}/baseline"] for m in metrics if m in LOCAL), None)
    rows = np.flatnonzero(np.isnan(base)) if base is not None else []
    if not len(rows):
        return []
    shown = ""
    if names is not None:
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        shown = f": {', '.join(names(rows[:5]))}{more}"
    return [
        f"{len(rows)} of {len(base)} image(s) have an empty mask at the model's input (the "
        "object lies outside the crop, or the mask is blank): pointing and energy leave "
        f"them out{shown}"
    ]


def flat_warnings(flat: dict[str, int], n: int, metrics: list[str]) -> list[str]:
    """One line per method whose maps are flat (one value everywhere, as an all-zero map is)
    for some images, saying what each metric run makes of them: pointing, energy and the
    randomization check leave them out; deletion, insertion and ROAD take their pixels in
    the random baseline's order (:func:`netlens.metrics.perturb.image_ranks`; ROAD-LeRF
    removes them in its reverse), so they score as the baseline does, which says nothing of
    the method (a low deletion score there looks good and means nothing)."""
    what = []
    if any(m in LOCAL for m in metrics):
        what.append("pointing and energy leave them out")
    ordered = [m if m in ORDERED[:2] else "ROAD" for m in metrics if m in ORDERED]
    if ordered:
        text = _listed(list(dict.fromkeys(ordered)))
        lerf = " (ROAD-LeRF: reversed)" if "road-lerf" in metrics else ""
        what.append(f"{text} take their pixels in random order, the random baseline's own{lerf}")
    if "randomization" in metrics:
        what.append("randomization leaves them out")
    return [
        f"{method}: {k} of {n} map(s) are flat (all zero: no evidence for the target at this "
        f"layer){': ' + '; '.join(what) if what else ''}"
        for method, k in flat.items()
        if k
    ]


def _listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else items[0]


def negligible(probs: np.ndarray) -> np.ndarray:
    """Per image, the target's probability on the intact image is negligible: below a tenth
    of the chance level 1/K (NaN: no probability, not flagged)."""
    p, k = probs[:, 0], probs[:, 1]
    with np.errstate(invalid="ignore"):
        return p < 1 / (10 * k)


def negligible_warning(weak: np.ndarray, probs: np.ndarray, scored: list[str]) -> list[str]:
    """One line when some targets have a negligible probability on the intact image."""
    if not weak.any():
        return []
    k = int(probs[weak, 1][0])
    return [
        f"{int(weak.sum())} of {len(weak)} image(s) have a target of negligible probability "
        f"(below {1 / (10 * k):.3g}, a tenth of chance among {k} classes, on the intact "
        f"image): {_listed(scored)} follow a probability that is about zero from the start, "
        "so their scores there say nothing of the maps (are the labels the model's classes?)"
    ]


def target_probs(probs: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """N×2: each image's target probability on the intact image (``probs``: the lens's class
    probabilities), and the number of classes K it is one of (NaN: a target outside them)."""
    probs = probs.detach().cpu()
    t = torch.as_tensor(y).long().cpu().view(-1)
    k = probs.shape[1]
    ok = (t >= 0) & (t < k)
    p = torch.full((len(t),), float("nan"), dtype=torch.float64)
    p[ok] = probs[torch.arange(len(t))[ok], t[ok]].double()
    return np.stack([p.numpy(), np.full(len(t), float(k))], axis=1)


def unused_masks_warning(masks: Any, ds: Any) -> list[str]:
    """One line when a ``masks`` folder was given for data that does not read masks from it
    (a named dataset such as ``shapes`` brings its own, a CSV list or a Dataset has none)."""
    if not masks or hasattr(ds, "masks_root"):  # read from the folder (evaluate's _FolderMasks)
        return []
    from ..naming import display_path

    return [
        f"--masks {display_path(masks)[:120]} is not used: masks are read from a folder only for "
        "a --data image folder; this data brings its own masks or has none"
    ]


def unscored_warning(table: list[dict[str, Any]], images: int) -> list[str]:
    """One line when some metric scored none of the ``images`` (its row is empty, n=0): every
    score was left out (flat maps, empty masks: said above) or not a finite number (a metric
    option too large, e.g. ROAD's --noise)."""
    empty = [f"{r['method']} {r['metric']}" for r in table if not r["n"]]
    if not images or not empty:
        return []
    return [
        f"no score for any of the {images} image(s) in {_listed(empty)} (n=0; see the lines "
        "above, or check the metric options: a score that is not a finite number is left out)"
    ]
