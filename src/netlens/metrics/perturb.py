"""Shared pieces of the perturbation metrics: pixel orders, batched probabilities, AUC."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers import eval_mode
from ..layout import run_channels_last
from ..parallel import map_batches, without_autograd
from ..targets import as_logits, model_output

__all__ = [
    "seed_option",
    "image_seeds",
    "auc",
    "flat_maps",
    "image_ranks",
    "pixel_ranks",
    "random_ranks",
    "row_probs",
    "to_tensor",
]


def to_tensor(a: Any, like: torch.Tensor) -> torch.Tensor:
    """``a`` (numpy or tensor) as a float tensor on ``like``'s device."""
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.detach().to(like.device, torch.float32)


def pixel_ranks(heatmap: np.ndarray, seed: int = 0) -> np.ndarray:
    """H×W int array: 0 for the most relevant pixel, H·W-1 for the least.

    Ties (flat regions of a CAM) are broken at random with ``seed``, so a flat map does not
    sweep the image top-left first.
    """
    h = np.asarray(heatmap, dtype=np.float64).ravel()
    tiebreak = np.random.default_rng(seed).random(h.size)
    order = np.lexsort((tiebreak, -h))  # last key is primary: relevance, high first
    ranks = np.empty(h.size, dtype=np.int64)
    ranks[order] = np.arange(h.size)
    return ranks.reshape(np.shape(heatmap))


def random_ranks(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A uniformly random pixel order (the baseline every heatmap should beat)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(shape[0] * shape[1]).reshape(shape)


def image_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per image: ``seed + i``, or the ``n`` seeds given (``evaluate`` gives each
    image ``seed`` + its index in the dataset, so its score does not depend on the batch it
    happened to fall in, ``--chunk`` or a DataLoader's batch size, beyond the float rounding
    of its map: see docs/metrics.md)."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} images")
    return seeds


def seed_option(seed: Any, image_seeds: Sequence[int] | None = None) -> int | list[int]:
    """A metric's seeds as :func:`image_seeds` takes them: ``image_seeds`` (one per image:
    ``evaluate`` gives each image ``seed`` + its dataset index), else the ``seed`` option."""
    return int(seed) if image_seeds is None else [int(s) for s in image_seeds]


def image_ranks(heatmaps: np.ndarray, order: str, seed: int | Sequence[int]) -> np.ndarray:
    """N×H×W ranks: of each heatmap (``"heatmap"``), or random (``"random"``); image ``i``'s
    ties and order drawn with :func:`image_seeds`' seed ``i``. A flat heatmap (one value
    everywhere, or not finite) has nothing to rank: it takes the random order itself, so its
    image scores exactly as the random baseline does."""
    seeds = image_seeds(seed, len(heatmaps))
    shape = heatmaps.shape[1:]
    if order == "random":
        return np.stack([random_ranks(shape, s) for s in seeds])
    flat = flat_maps(heatmaps)
    return np.stack(
        [
            random_ranks(shape, s) if f else pixel_ranks(h, s)
            for h, s, f in zip(heatmaps, seeds, flat, strict=True)
        ]
    )


def flat_maps(maps: Any) -> np.ndarray:
    """Per map of an N×H×W stack: flat (one value everywhere, or not finite)? What ``evaluate``
    and the randomisation check count as flat maps, and what :func:`image_ranks` cannot rank."""
    m = np.asarray(maps, np.float64).reshape(len(maps), -1)
    with np.errstate(invalid="ignore"):
        return ~(np.ptp(m, axis=1) > 0) if m.shape[1] else np.ones(len(m), bool)


def row_probs(
    model: nn.Module,
    rows: Callable[[int, int], torch.Tensor],
    targets: np.ndarray,
    batch_size: int,
    workers: int = 1,
) -> np.ndarray:
    """Probability of class ``targets[j]`` for each perturbed image ``j``: the softmax of the
    logits (of a dict, tuple or ``.logits`` output; see :func:`netlens.targets.as_logits` for
    single-logit and probability outputs), or ``model.class_probabilities(output)`` when the
    model has it (evaluate's wrapper: sigmoids for a multi-label model).

    ``rows(start, stop)`` makes images ``start..stop-1`` (of every source image and step
    together), so each forward pass is a full batch of ``batch_size``, made only when needed;
    ``workers`` threads run batches side by side (:mod:`netlens.parallel`).
    """
    total = len(targets)
    tg = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    probs_of = getattr(model, "class_probabilities", None)  # the model's task knows better

    def run(start: int) -> np.ndarray:
        stop = min(start + batch_size, total)

        def batch() -> np.ndarray:
            out = model_output(run_channels_last(model, model, rows(start, stop))).float()
            if len(out) != stop - start:  # a fixed-batch export: one row for the batch
                from ..errors import NetlensError
                from ..output_rows import rows_refusal

                why = rows_refusal(out, stop - start)
                raise NetlensError(f"{why} (in a batch of the metrics' perturbed copies)")
            probs = probs_of(out) if probs_of else torch.softmax(as_logits(out), dim=1)
            picked = probs[torch.arange(stop - start), tg[start:stop].to(probs.device)]
            return picked.cpu().numpy().astype(np.float64)

        return without_autograd(model, batch)

    with eval_mode(model):
        parts = map_batches(run, range(0, total, batch_size), workers, model=model)
    return np.concatenate(parts) if parts else np.empty(0)


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves sampled evenly on [0, 1] (trapezoid rule), one per row."""
    c = np.atleast_2d(np.asarray(curve, dtype=np.float64))
    k = c.shape[1] - 1
    return ((c[:, :-1] + c[:, 1:]) / 2).sum(axis=1) / max(k, 1)
