"""Channel (unit) ablation within one layer: each channel alone, then cumulative curves.

Single channels are swept in stacked passes: the unit's cached output is repeated along the batch
dimension with a different channel mask per copy, so e.g. 512 ablations become a few big batches
through the rest of the network. The cumulative curves (Morcos et al., 2018) remove channels in
order of measured importance (most harm from removing it alone first) and in a seeded random order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .engine import Ablation
from .modes import Stats, channel_group_replacement

__all__ = ["channel_ablations", "curve_ablations", "curve_points", "group_size", "orders"]


def group_size(sample_numel: int, batch: int, budget: int = 1 << 27) -> int:
    """How many channel ablations to stack per pass so one stacked tensor stays under ``budget``
    bytes (float32) at the unit."""
    return int(max(1, min(256, budget // max(1, 4 * sample_numel * batch))))


def channel_key(unit: str, channel: int) -> str:
    return f"{unit}#c{channel}"


def curve_key(unit: str, order: str, k: int) -> str:
    return f"{unit}@{order}:{k}"


def _stack(
    unit: str,
    keys: list[str],
    masks: list[torch.Tensor],
    ids: list[int],
    mode: str,
    stats: Stats | None,
    seed: int,
    group: int,
    last: bool = False,
    cells: list[dict[str, Any]] | None = None,
) -> list[Ablation]:
    out = []
    for i in range(0, len(keys), group):
        m = torch.stack(masks[i : i + group])
        replace = channel_group_replacement(
            mode, stats, m, ids[i : i + group], seed=seed, last=last
        )
        kept = list(cells[i : i + group]) if cells is not None else []
        out.append(Ablation(keys[i : i + group], unit, replace, kept))
    return out


def channel_ablations(
    unit: str,
    channels: int,
    mode: str,
    stats: Stats | None,
    *,
    seed: int = 0,
    group: int = 64,
    skip: set[str] | frozenset = frozenset(),
    which: list[int] | None = None,
    last: bool = False,
) -> list[Ablation]:
    """One ablation per channel of ``unit``'s output (``which``: only those; ``skip`` left out;
    ``last``: the channels are its last axis)."""
    chosen = range(channels) if which is None else which
    todo = [c for c in chosen if channel_key(unit, c) not in skip]
    eye = torch.eye(channels, dtype=torch.bool)
    return _stack(
        unit,
        [channel_key(unit, c) for c in todo],
        [eye[c] for c in todo],
        todo,
        mode,
        stats,
        seed,
        group,
        last,
        [{"kind": "channel", "channel": c} for c in todo],
    )


def curve_points(channels: int, points: int = 17) -> list[int]:
    """The numbers of removed channels the curves are measured at (0 and all included)."""
    return sorted({int(round(v)) for v in np.linspace(0, channels, min(points, channels + 1))})


def orders(harm: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Positions into ``harm`` by importance (most harm first; ties by position) and in a seeded
    random order."""
    return {
        "importance": np.argsort(-harm, kind="stable"),
        "random": np.random.default_rng(seed).permutation(len(harm)),
    }


def curve_ablations(
    unit: str,
    channels: int,
    order: dict[str, np.ndarray],
    mode: str,
    stats: Stats | None,
    *,
    seed: int = 0,
    group: int = 64,
    points: int = 17,
    skip: set[str] | frozenset = frozenset(),
    last: bool = False,
) -> list[Ablation]:
    """Ablations removing the first k channels of each order, for k in :func:`curve_points`.

    An order holds channel numbers (all of ``unit``'s channels, or the ones studied).
    """
    keys, masks, ids, cells = [], [], [], []
    for o, (name, perm) in enumerate(order.items()):
        for k in curve_points(len(perm), points):
            key = curve_key(unit, name, k)
            if key in skip:
                continue
            mask = torch.zeros(channels, dtype=torch.bool)
            mask[torch.as_tensor(perm[:k], dtype=torch.long)] = True
            keys.append(key)
            masks.append(mask)
            ids.append(channels + o * (channels + 1) + k)  # noise seeds apart from single ones
            cells.append({"kind": f"curve-{name}", "k": k})
    return _stack(unit, keys, masks, ids, mode, stats, seed, group, last, cells)
