"""The ``top-activations`` analyzer: the inputs (and the patch in them) that excite a channel most.

One streaming pass over a dataset keeps, for every channel of the layer, the ``k`` inputs with
the highest peak activation (the maximum over the channel's map) and where the peak is. Then, for
the channels shown, the *patch* of each input is the effective receptive field of the peak unit
on that input: the box around the pixels where the gradient of that unit's activation with respect
to the input is at least 1% of its largest magnitude (one batched ``torch.autograd.grad`` per
channel; no parameter's ``.grad`` is touched). ``cells`` gives the coarser alternative: the region
of the input that the unit's map position covers (its ViT patch, for token layers).

Shown channels: ``channels=[...]``, else the ``max_channels`` with the largest mean peak
activation over the dataset. Their inputs are read again as the model saw them: through a
user's DataLoader (its ``collate_fn``) when one was given; an input whose peak then differs
from the recorded one (random augmentation) is named in one warning line (``meta["warnings"]``).

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

from ..activations import patch_stride, tensor_output, to_spatial
from ..data.items import item_source
from ..errors import AnalyzerError, NetlensError, NetlensWarning
from ..fresh_input import fresh
from ..layers import eval_mode, resolve_layers
from ..probes import probe
from .base import Analyzer, Result, Run
from .specs import TOP
from .stats_layers import overwritten

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..lens import Lens

__all__ = ["TopActivationsAnalyzer", "TopActivationsResult", "gradient_box", "merge_top"]


@dataclass(frozen=True)
class TopActivationsResult(Result):
    """``arrays``: for every channel ``scores``/``indices`` (C×k) and ``positions`` (C×k×2, y and x
    on the map); for the shown channels ``channels`` (S), ``images`` (S×k×H×W×3 uint8, the inputs
    as the model saw them; inputs of different sizes at the top left of the largest, padded
    black), ``boxes`` and ``cells`` (S×k×4: y0, x0, y1, x1 in input pixels, end-exclusive).
    ``meta["boxes"]``: ``"gradient"``, or ``"cells"`` when no gradient reaches the layer (a
    quantized model, a forward under ``torch.no_grad``) and the boxes are the cells."""

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
    """Keep the ``k`` largest scores per row of (C×k kept) ∪ (C×N new); ties keep the earlier.
    ``ids`` is C×N, or C×N×D (several numbers per entry: sample, y, x)."""
    allv = torch.cat([best, scores], dim=1)
    alli = torch.cat([best_ids, ids], dim=1)
    order = torch.sort(allv, dim=1, descending=True, stable=True).indices[:, :k]
    index = order if alli.dim() == 2 else order[..., None].expand(-1, -1, alli.shape[2])
    return torch.gather(allv, 1, order), torch.gather(alli, 1, index)


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


def _cell(
    pos: tuple[int, int],
    grid: tuple[int, int],
    size: tuple[int, int],
    stride: tuple[int, int] | None = None,
) -> list[int]:
    """The input pixels (y0, x0, y1, x1) map position ``pos`` covers: with the patch
    embedding's ``stride`` (a map of its patch grid), that patch from the top left, clipped
    to the input (timm's ``dynamic_img_pad`` pads the bottom and right to whole patches);
    else the grid spread evenly over the input."""
    (y, x), (gh, gw), (h, w) = pos, grid, size
    if stride is not None:
        sy, sx = stride
        y0, x0 = min(y * sy, h - 1), min(x * sx, w - 1)
        return [y0, x0, max(min((y + 1) * sy, h), y0 + 1), max(min((x + 1) * sx, w), x0 + 1)]
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
        indices, best_pos = best_ids[..., 0], best_ids[..., 1:]
        shown = pick_channels((peak_sum / seen)[None], o.max_channels, o.channels)[0]
        arrays = {
            "scores": best.numpy(),
            "indices": indices.numpy(),
            "positions": best_pos.numpy(),
            "channels": shown.numpy(),
        }
        dataset = run.data.loader(o.batch_size).dataset
        wanted = sorted({int(i) for i in indices[shown].reshape(-1)})
        images = fetch_inputs(run, dataset, wanted, o.batch_size)
        patches, notes = _patches(lens, images, name, shown, indices, best_pos, best)
        arrays.update(patches)
        meta = {
            "layer": name,
            "samples": seen,
            "k": int(best.shape[1]),
            "map_size": list(grid),
            "channels": shown.tolist(),
            "total_channels": int(best.shape[0]),
            "boxes": notes.pop("boxes"),
            **notes,
        }
        rows = _rows(arrays, shown)
        paths = [item_source(dataset, row["sample"]) for row in rows]
        if any(paths):  # the file of each sample, which its number alone does not say
            for row, path in zip(rows, paths, strict=True):
                row["path"] = path or ""
        return TopActivationsResult("top-activations", arrays, rows, meta)


def _example(run: Run) -> torch.Tensor:
    """An input of the model's size, as ``features`` takes its first image: the data's first
    readable item (unreadable ones before it are skipped and named when the data is read),
    else the size the model records (the data cannot be indexed, or is empty)."""
    from ..data.items import BAD_ITEM

    data = run.data.dataset
    try:
        count = len(data)
    except TypeError:  # a stream: its first item would be consumed
        count = 0
    for i in range(count):
        try:
            item = data[i]
        except BAD_ITEM as exc:
            if run.data.strict:
                raise
            if i == count - 1:  # none reads: the data pass says so in one line, if it runs
                try:
                    return run.lens.example()
                except NetlensError:
                    raise exc from None
            continue
        x = item[0] if isinstance(item, (list, tuple)) else item
        if isinstance(x, torch.Tensor):
            return run.lens.place(x[None])
        break
    return run.lens.example()


def _one_layer(model: Any, layer: Any, example: torch.Tensor, output: Any = None) -> str:
    names = resolve_layers(model, layer, example=example, output=output)
    if len(names) > 1:
        raise AnalyzerError(
            f"top-activations looks at one layer; the selector matched "
            f"{len(names)} ({', '.join(names[:4])}...)"
        )
    return names[0]


def _stream_peaks(run: Run, name: str, k: int) -> tuple[Any, ...]:
    """One pass over the data: each channel's k highest peaks (C×k scores; C×k×3 sample, y
    and x on that sample's map, whose size may differ between batches), the sum of every
    channel's peak, the count and the first map's size; all processes' parts combined in
    data order."""
    model, lens = run.lens.model, run.lens
    best = best_ids = grid = None
    sums: list[torch.Tensor] = []  # per-batch peak sums, added up in batch order below
    seen = 0
    with (
        torch.no_grad(),
        probe(model, name, to="cpu", first_of_tuple=True) as p,
        run.progress.task(f"top activations of {name}", len(run.data)) as advance,
    ):
        for x, _, index in run.data.loader(run.options.batch_size, with_index=True):
            x_dev = x.to(lens.device)
            state = torch.get_rng_state()
            model(fresh(x_dev))
            if overwritten(p):  # an input-dependent in-place write the probe could not re-run
                p.clear()  # (other hooks on the model); it guards every write from now on
                torch.set_rng_state(state)  # the same draws (test-time noise) again
                model(fresh(x_dev))
            act = _spatial(p[name].output, model, name, x)
            p.clear()
            n, c, gh, gw = act.shape
            peak, where = act.reshape(n, c, -1).max(dim=2)
            where = where.T  # C×n; each batch's own grid (images may differ in size)
            code = torch.stack([index.long().expand(c, -1), where // gw, where % gw], dim=-1)
            if best is None:
                best = torch.full((c, 0), float("-inf"), dtype=torch.float32)
                best_ids, grid = torch.zeros((c, 0, 3), dtype=torch.long), (gh, gw)
            best, best_ids = merge_top(best, best_ids, peak.T.float(), code, k)
            sums.append(peak.sum(dim=0).float())
            seen += n
            advance(n)
    best, best_ids, sums, seen, grid = _combine(
        run.group.gather((best, best_ids, sums, seen, grid)), k
    )
    if best is None:
        raise AnalyzerError("no data passed through the model (the dataset is empty?)")
    peak_sum = torch.zeros(best.shape[0], dtype=torch.float32)
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


def fetch_inputs(run: Run, dataset: Any, wanted: list[int], batch_size: int) -> dict[int, Any]:
    """The inputs the model saw for samples ``wanted`` (CPU tensors): through the user's
    DataLoader (its collate function and workers) when it draws dataset positions, else
    item by item from ``dataset``, as netlens streamed them."""
    from torch.utils.data import DataLoader

    from ..data.items import as_pair
    from .inputs import _drawn, _indexable, _loader_options, first_tensor

    given = run.data.loader_given
    if given is None or not _indexable(given) or not wanted:
        return {i: _sample(dataset, i) for i in wanted}
    size = max(1, given.batch_size or batch_size)
    chunks = [wanted[s : s + size] for s in range(0, len(wanted), size)]
    loader = DataLoader(given.dataset, batch_sampler=chunks, **_loader_options(given))
    found: dict[int, Any] = {}
    for chunk, batch in zip(chunks, _drawn(loader), strict=True):
        x = first_tensor(as_pair(batch)) if batch is not None else None
        if isinstance(x, torch.Tensor) and len(x) == len(chunk):
            found.update({i: t.cpu() for i, t in zip(chunk, x, strict=True)})
        else:  # a collate function that drops items: read them as the dataset gives them
            found.update({i: _sample(dataset, i) for i in chunk})
    return found


def _patches(
    lens: Lens,
    inputs: dict[int, torch.Tensor],
    name: str,
    shown: torch.Tensor,
    indices: torch.Tensor,
    pos: torch.Tensor,
    scores: torch.Tensor,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Images, gradient boxes and map cells of the top inputs of the shown channels, and
    notes for the meta: ``boxes`` (``"gradient"``, or ``"cells"`` when the layer cannot be
    differentiated) and ``warnings`` (inputs read again that do not give their peaks).

    All (channel, rank) pairs go through in batches of images of one size: each image's
    gradient depends only on its own target unit (eval mode: images do not interact), so one
    backward serves many. Images of different sizes are padded (black, bottom and right) to
    the largest in ``images``; boxes and cells are in each image's own pixels.
    """
    model = lens.model
    s, k = len(shown), indices.shape[1]
    chans = shown.repeat_interleave(k)
    flat_idx, flat_pos = indices[shown].reshape(-1), pos[shown].reshape(-1, 2)
    recorded = scores[shown].reshape(-1)
    n = s * k
    images: list[Any] = [None] * n
    boxes: list[Any] = [None] * n
    cells: list[Any] = [None] * n
    differ: list[int] = []
    groups: dict[tuple[int, ...], list[int]] = {}
    for j in range(n):
        groups.setdefault(tuple(inputs[int(flat_idx[j])].shape), []).append(j)
    quantized = False
    for members in groups.values():
        for start in range(0, len(members), _PATCH_BATCH):
            part = torch.tensor(members[start : start + _PATCH_BATCH], dtype=torch.long)
            x = lens.place(torch.stack([inputs[int(flat_idx[j])] for j in part]))
            x.requires_grad_(True)
            with (
                torch.enable_grad(),
                eval_mode(model),
                probe(model, name, grads=True, first_of_tuple=True) as p,
            ):
                model(fresh(x))  # the gradient reaches x through the copy
                out = p[name].output
                quantized |= bool(getattr(out, "is_quantized", False))
                act = _spatial(out, model, name, x)
                gh, gw = act.shape[-2:]
                ys, xs = flat_pos[part, 0], flat_pos[part, 1]
                inside = (ys < gh) & (xs < gw)
                ys, xs = ys.clamp(max=gh - 1), xs.clamp(max=gw - 1)
                unit = act[torch.arange(len(x)), chans[part], ys, xs]
                got = unit.detach().float().cpu()
                same = inside & _close(got, recorded[part], lens.dtype)
                differ += [int(flat_idx[j]) for j, ok in zip(part, same, strict=True) if not ok]
                if unit.requires_grad:
                    (grad,) = torch.autograd.grad(unit.sum(), x)
                    found = [gradient_box(g) for g in grad.cpu()]
                else:  # no gradients reach the layer: see _no_gradients
                    found = [None] * len(x)
            size = tuple(x.shape[-2:])
            stride = patch_stride(model, size, (gh, gw))
            for j, box, y0, x0, t in zip(
                part.tolist(), found, ys, xs, x.detach().cpu(), strict=True
            ):
                boxes[j], images[j] = box, lens.transform.denormalize(t)
                cells[j] = _cell((int(y0), int(x0)), (gh, gw), size, stride)
    fallback = any(b is None for b in boxes)
    if fallback:
        warnings.warn(_no_gradients(model, name, quantized), NetlensWarning, stacklevel=3)
    boxes = [c if b is None else b for b, c in zip(boxes, cells, strict=True)]
    notes: dict[str, Any] = {"boxes": "cells" if fallback else "gradient"}
    if differ:
        notes["warnings"] = [_differ_line(name, sorted(set(differ)))]
    stacked = _padded(images)
    return {
        "images": stacked.reshape(s, k, *stacked.shape[1:]),
        "boxes": np.array(boxes, dtype=np.int64).reshape(s, k, 4),
        "cells": np.array(cells, dtype=np.int64).reshape(s, k, 4),
    }, notes


def _close(got: torch.Tensor, recorded: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Whether each unit's activation, read again, is the peak recorded in the data pass (up
    to the rounding of another batch's arithmetic: TF32 convolutions on a GPU, half
    precision)."""
    low = dtype in (torch.float16, torch.bfloat16)
    scale = max(float(recorded.abs().max()) if len(recorded) else 1.0, 1e-6)
    rtol, atol = (3e-2, 1e-2) if low else (1e-2, 1e-3)
    return torch.isclose(got, recorded, rtol=rtol, atol=atol * scale)


def _differ_line(name: str, samples: list[int]) -> str:
    shown = ", ".join(map(str, samples[:5])) + (", ..." if len(samples) > 5 else "")
    return (
        f"{len(samples)} of the top inputs of '{name}' (samples {shown}) do not give their "
        "recorded peak when read again (random augmentation in the Dataset or the "
        "DataLoader?): their images and boxes may not be those the model saw; make the "
        "data deterministic for top-activations"
    )


def _no_gradients(model: Any, name: str, quantized: bool) -> str:
    """Why no gradient reaches ``name``, for the warning: a quantized model, else a forward
    that runs it under ``torch.no_grad`` (a frozen backbone's probe)."""
    quantized = quantized or any(
        "quantized" in type(m).__module__.split(".") for m in model.modules()
    )
    cells = "the boxes are the map cells of the peaks, not the input regions that drive them"
    if quantized:
        return (
            f"'{name}' is computed without gradients: the model is quantized and autograd "
            f"cannot differentiate its quantized layers, so {cells}; for gradient boxes, "
            "run top-activations on the float model"
        )
    return (
        f"the model computes '{name}' without gradients (under torch.no_grad in its forward, "
        f"or through layers autograd cannot differentiate): {cells}"
    )


def _padded(images: list[np.ndarray]) -> np.ndarray:
    """H×W×3 images of any sizes as one array, each at the top left of the largest size."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    out = np.zeros((len(images), h, w, images[0].shape[2]), dtype=images[0].dtype)
    for i, im in enumerate(images):
        out[i, : im.shape[0], : im.shape[1]] = im
    return out
