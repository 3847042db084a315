"""The ``top-activations`` analyzer: the inputs (and the patch in them) that excite a channel most.

One streaming pass over a dataset keeps, for every channel of the layer, the ``k`` inputs with
the highest peak activation (the maximum over the channel's map) and where the peak is. Then, for
the channels shown, the *patch* of each input is the effective receptive field of the peak unit
on that input: the box around the pixels where the gradient of that unit's activation with respect
to the input is at least 1% of its largest magnitude (one batched ``torch.autograd.grad`` per
channel; no parameter's ``.grad`` is touched). ``cells`` gives the coarser alternative: the region
of the input that the unit's map position covers (its ViT patch, for token layers).

Shown channels: ``channels=[...]``, else the ``max_channels`` with the largest mean peak
activation over the dataset.

Sharded over processes (torchrun), each rank keeps the top ``k`` of its share of the batches;
the shares are merged in rank order with the same stable merge (ties keep the earlier input), and
the per-batch peak sums are added in batch order, so scores, inputs and channels shown are those
of one process, bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..activations import tensor_output, to_spatial
from ..data.items import item_source
from ..errors import AnalyzerError, NetlensWarning
from ..fresh_input import fresh
from ..layers import eval_mode, resolve_layers
from ..probes import probe
from .base import Analyzer, Result, Run
from .specs import TOP

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lens import Lens

__all__ = ["TopActivationsAnalyzer", "TopActivationsResult", "gradient_box", "merge_top"]


@dataclass(frozen=True)
class TopActivationsResult(Result):
    """``arrays``: for every channel ``scores``/``indices`` (C×k) and ``positions`` (C×k×2, y and x
    on the map); for the shown channels ``channels`` (S), ``images`` (S×k×H×W×3 uint8), ``boxes``
    and ``cells`` (S×k×4: y0, x0, y1, x1 in input pixels, end-exclusive)."""

    def headline(self) -> str:
        m = self.meta
        return (
            f"top {m['k']} of {m['samples']} inputs for {len(m['channels'])} channels of "
            f"{m['layer']}"
        )

    def figures(self) -> dict[str, Figure]:
        from ..render.top_figures import top_figures

        return top_figures(self.arrays, self.meta)


_PATCH_BATCH = 32  # images per forward/backward when finding patches


def merge_top(
    best: torch.Tensor, best_ids: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``k`` largest scores per row of (C×k kept) ∪ (C×N new); ties keep the earlier."""
    allv = torch.cat([best, scores], dim=1)
    alli = torch.cat([best_ids, ids], dim=1)
    order = torch.sort(allv, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(allv, 1, order), torch.gather(alli, 1, order)


def _combine(parts: list[tuple[Any, ...]], k: int) -> tuple[Any, ...]:
    """Every rank's (top k, ids, batch sums, count, grid) merged in rank order (batch order)."""
    best = best_ids = grid = None
    sums: list[torch.Tensor] = []
    for b, ids, part_sums, _, g in parts:
        if b is None:
            continue
        if best is None:
            best, best_ids, grid = b, ids, g
        else:
            best, best_ids = merge_top(best, best_ids, b, ids, k)
        sums += part_sums
    return best, best_ids, sums, sum(p[3] for p in parts), grid


def gradient_box(grad: torch.Tensor, rel: float = 0.01) -> tuple[int, int, int, int]:
    """Bounding box (y0, x0, y1, x1) of the pixels where |grad| (C×H×W) ≥ rel × its max."""
    mag = grad.abs().sum(dim=0)
    hit = (
        mag >= rel * float(mag.max())
        if float(mag.max()) > 0
        else torch.ones_like(mag, dtype=torch.bool)
    )
    ys, xs = torch.nonzero(hit, as_tuple=True)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def _cell(pos: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    (y, x), (gh, gw), (h, w) = pos, grid, size
    return [
        y * h // gh,
        x * w // gw,
        max((y + 1) * h // gh, y * h // gh + 1),
        max((x + 1) * w // gw, x * w // gw + 1),
    ]


class TopActivationsAnalyzer(Analyzer):
    """The dataset inputs that excite each channel of a layer most, with their patches."""

    spec = TOP
    reads_labels = False  # activations only: any images will do

    def compute(self, run: Run) -> TopActivationsResult:
        """Stream the data once, keep each channel's k highest peaks, then cut the patches."""
        from .features import check_channels, pick_channels

        lens, o = run.lens, run.options
        check_channels(TOP, o.channels, "max_channels", o.max_channels, "--max-channels")
        name = _one_layer(lens.model, o.layer, _example(run), lens.output_key)
        run.layers = [name]
        best, best_ids, peak_sum, seen, grid = _stream_peaks(run, name, o.k)
        gh, gw = grid
        indices, flat = best_ids // (gh * gw), best_ids % (gh * gw)
        best_pos = torch.stack([flat // gw, flat % gw], dim=-1)
        shown = pick_channels((peak_sum / seen)[None], o.max_channels, o.channels)[0]
        arrays = {
            "scores": best.numpy(),
            "indices": indices.numpy(),
            "positions": best_pos.numpy(),
            "channels": shown.numpy(),
        }
        dataset = run.data.loader(o.batch_size).dataset
        arrays.update(self._patches(lens, dataset, name, shown, indices, best_pos, grid))
        meta = {
            "layer": name,
            "samples": seen,
            "k": int(best.shape[1]),
            "map_size": list(grid),
            "channels": shown.tolist(),
            "total_channels": int(best.shape[0]),
        }
        rows = _rows(arrays, shown)
        paths = [item_source(dataset, row["sample"]) for row in rows]
        if any(paths):  # the file of each sample, which its number alone does not say
            for row, path in zip(rows, paths, strict=True):
                row["path"] = path or ""
        return TopActivationsResult("top-activations", arrays, rows, meta)

    def _patches(
        self,
        lens: Lens,
        dataset: Any,
        name: str,
        shown: torch.Tensor,
        indices: torch.Tensor,
        pos: torch.Tensor,
        grid: tuple[int, int],
    ) -> dict[str, np.ndarray]:
        """Images, gradient boxes and map cells of the top inputs of the shown channels.

        All (channel, rank) pairs go through in batches: each image's gradient depends only on
        its own target unit (eval mode: images do not interact), so one backward serves many.
        """
        model = lens.model
        s, k = len(shown), indices.shape[1]
        chans = shown.repeat_interleave(k)
        flat_idx, flat_pos = indices[shown].reshape(-1), pos[shown].reshape(-1, 2)
        images, boxes = [], []
        for start in range(0, s * k, _PATCH_BATCH):
            sl = slice(start, start + _PATCH_BATCH)
            x = lens.place(torch.stack([_sample(dataset, int(i)) for i in flat_idx[sl]]))
            x.requires_grad_(True)
            with torch.enable_grad(), eval_mode(model), probe(model, name, grads=True) as p:
                model(fresh(x))  # the gradient reaches x through the copy
                act = _spatial(p[name].output, model, name, x)
                rows = torch.arange(len(x))
                target = act[rows, chans[sl], flat_pos[sl, 0], flat_pos[sl, 1]].sum()
                if target.requires_grad:
                    (grad,) = torch.autograd.grad(target, x)
                    boxes += [gradient_box(g) for g in grad.cpu()]
                else:  # the model runs the layer under no_grad (a frozen backbone's probe)
                    boxes += [None] * len(x)
            images += [lens.transform.denormalize(t) for t in x.detach().cpu()]
        size = tuple(images[0].shape[:2])
        cells = [_cell(tuple(q.tolist()), grid, size) for q in flat_pos]
        if any(b is None for b in boxes):
            warnings.warn(
                f"the model computes '{name}' without gradients (under torch.no_grad in its "
                "forward): the boxes are the map cells of the peaks, not the input regions "
                "that drive them",
                NetlensWarning,
                stacklevel=2,
            )
        boxes = [c if b is None else b for b, c in zip(boxes, cells, strict=True)]
        return {
            "images": np.stack(images).reshape(s, k, *images[0].shape),
            "boxes": np.array(boxes, dtype=np.int64).reshape(s, k, 4),
            "cells": np.array(cells, dtype=np.int64).reshape(s, k, 4),
        }


def _example(run: Run) -> torch.Tensor:
    """An input of the model's size: its recorded one, else the data's first readable image
    (unreadable ones before it are skipped and named when the data is read)."""
    from ..data.items import BAD_ITEM
    from ..errors import NetlensError

    try:
        return run.lens.example()
    except NetlensError:
        data = run.data.dataset
        for i in range(len(data)):
            try:
                return run.lens.place(data[i][0][None])
            except BAD_ITEM:
                if run.data.strict or i == len(data) - 1:
                    raise
        raise


def _one_layer(model: Any, layer: Any, example: torch.Tensor, output: Any = None) -> str:
    names = resolve_layers(model, layer, example=example, output=output)
    if len(names) > 1:
        raise AnalyzerError(
            f"top-activations looks at one layer; the selector matched "
            f"{len(names)} ({', '.join(names[:4])}...)"
        )
    return names[0]


def _stream_peaks(run: Run, name: str, k: int) -> tuple[Any, ...]:
    """One pass over the data: each channel's k highest peaks (sample and position in one
    integer), the sum of every channel's peak, the count and the map size; all processes'
    parts combined in data order."""
    model, lens = run.lens.model, run.lens
    best = best_ids = grid = None
    sums: list[torch.Tensor] = []  # per-batch peak sums, added up in batch order below
    seen = 0
    with (
        torch.no_grad(),
        probe(model, name, to="cpu") as p,
        run.progress.task(f"top activations of {name}", len(run.data)) as advance,
    ):
        for x, _, index in run.data.loader(run.options.batch_size, with_index=True):
            model(fresh(x.to(lens.device)))
            act = _spatial(p[name].output, model, name, x)
            p.clear()
            n, c, gh, gw = act.shape
            peak, where = act.reshape(n, c, -1).max(dim=2)
            code = index.long().expand(c, -1) * (gh * gw) + where.T
            if best is None:
                best = torch.full((c, 0), float("-inf"))
                best_ids, grid = torch.zeros((c, 0), dtype=torch.long), (gh, gw)
            best, best_ids = merge_top(best, best_ids, peak.T.float(), code, k)
            sums.append(peak.sum(dim=0).float())
            seen += n
            advance(n)
    best, best_ids, sums, seen, grid = _combine(
        run.group.gather((best, best_ids, sums, seen, grid)), k
    )
    if best is None:
        raise AnalyzerError("no data passed through the model (the dataset is empty?)")
    peak_sum = torch.zeros(best.shape[0])
    for batch_sum in sums:
        peak_sum += batch_sum
    return best, best_ids, peak_sum, seen, grid


def _rows(arrays: dict[str, np.ndarray], shown: torch.Tensor) -> list[dict[str, Any]]:
    """One row per shown channel and rank: the sample, its peak and where it is."""
    scores, indices, pos = arrays["scores"], arrays["indices"], arrays["positions"]
    return [
        {
            "channel": int(ch),
            "rank": r + 1,
            "sample": int(indices[ch, r]),
            "score": float(scores[ch, r]),
            "y": int(pos[ch, r, 0]),
            "x": int(pos[ch, r, 1]),
            "box": arrays["boxes"][i, r].tolist(),
        }
        for i, ch in enumerate(shown.tolist())
        for r in range(scores.shape[1])
    ]


def _spatial(out: Any, model: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    t = tensor_output(out, name).float()
    if t.dim() == 2 and t.shape[0] == len(x):  # one value per unit (a Linear, the logits):
        return t[:, :, None, None]  # a 1×1 map, driven by the whole image
    return to_spatial(t, model, name, len(x), x.shape[-2:])


def _sample(dataset: Any, i: int) -> torch.Tensor:
    item = dataset[i]
    return item[0] if isinstance(item, (list, tuple)) else item
