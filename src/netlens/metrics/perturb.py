"""Shared pieces of the perturbation metrics: pixel orders, batched probabilities, AUC."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers import eval_mode

__all__ = ["auc", "pixel_ranks", "random_ranks", "target_probs", "to_tensor"]


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


def target_probs(
    model: nn.Module,
    images: Iterator[torch.Tensor],
    target: int,
    batch_size: int,
    total: int,
) -> np.ndarray:
    """Softmax probability of ``target`` for ``total`` images drawn from a generator.

    Images are stacked into chunks of ``batch_size`` so every chunk is one forward pass.
    """
    out = np.empty(total, dtype=np.float64)
    done = 0
    with torch.no_grad(), eval_mode(model):
        while done < total:
            n = min(batch_size, total - done)
            chunk = torch.stack([next(images) for _ in range(n)])
            logits = _logits(model(chunk))
            out[done : done + n] = torch.softmax(logits.float(), dim=1)[:, target].cpu().numpy()
            done += n
    return out


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves sampled evenly on [0, 1] (trapezoid rule), one per row."""
    c = np.atleast_2d(np.asarray(curve, dtype=np.float64))
    k = c.shape[1] - 1
    return ((c[:, :-1] + c[:, 1:]) / 2).sum(axis=1) / max(k, 1)


def perturbed(
    x: torch.Tensor,
    fill: torch.Tensor,
    ranks: torch.Tensor,
    counts: list[int],
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """For each count ``n``: ``x`` with its ``n`` top-ranked pixels taken from ``fill``.

    ``transform(image, removed_mask)`` replaces the plain copy (ROAD's imputation).
    """
    for n in counts:
        removed = (ranks < n).unsqueeze(0)
        if transform is not None:
            yield transform(x, removed[0])
        else:
            yield torch.where(removed, fill, x)
