"""The ``stats`` analyzer: per-layer activation statistics over a dataset, in one streaming pass.

Like fastai's ``ActivationStats``, but over a dataset and without keeping activations: each batch
updates, per layer,

- the count of values, and the count, mean and M2 (sum of squared deviations) of the finite
  ones, float64, merged with Chan et al.'s update, so ``std`` is the population standard
  deviation of every finite activation value seen (float64 layers stay float64, others are read
  as float32);
- min and max of the finite values, the number of NaN (``nan``) and ±inf (``inf``) values (a
  warning names the layers that have any) and the number of values ≤ ``eps`` (``near_zero``:
  fraction of all values);
- on an activation whose negative side passes its input on (PReLU, LeakyReLU, RReLU, ELU,
  CELU, SELU) and whose outputs run below −``eps`` over the data, the number of values with
  |x| ≤ ``eps`` and every unit's running maximum of |x|: there a negative value carries signal
  (PReLU's slope times x), so ``near_zero`` counts |x| ≤ ``eps`` and a unit is dead when
  |x| ≤ ``eps`` for every input (``x ≤ eps`` counted the negative half, 31–59 % of MTCNN's
  PReLU outputs, and called units dead whose outputs ran down to −0.89). The row's
  ``zero_rule`` says which rule applied (``x ≤ eps`` or ``|x| ≤ eps``). ReLU and the smooth
  ReLUs whose negative tail is small and bounded (GELU's −0.17, SiLU's −0.28: a unit never
  positive is the dead one, as usually counted), and Conv2d/Linear layers (whose negative
  values are what a following ReLU zeroes), keep ``x ≤ eps``;
- the running maximum of every *unit*. A unit is one element of a layer's output for one input:
  a (channel, y, x) position of a conv map, a (token, feature) of a ViT block, a (window, token,
  feature) of Swin's window attention, a feature of a vector. The images are found where they
  are (:mod:`netlens.image_axis`): first for most layers, second in sequence-first L×N×C
  layers, the outer factor of Swin's (N·windows)×T×C. A unit is *dead* when it is ≤ ``eps`` for
  every input of the dataset; a channel is dead when all its units are (channel axis: the one
  after the images for N×C×H×W and N×C, the last for N×H×W×C maps and tokens);
- a histogram with fixed bins: ``bins`` equal bins over ``hist_range`` when given, else over the
  first batch's finite min..max widened by 10% on each side. Later values outside it are counted
  in ``underflow``/``overflow`` (−inf and +inf too) and NaNs in ``nan`` (so nothing is silently
  dropped).

Sharded over processes (torchrun), every rank streams its share of the batches with the first
batch's histogram edges (rank 0 reads them off the data's first batch), and the partial
statistics are merged in rank order (:meth:`LayerStats.merge`): the batch moments are folded in
the order one process folds them, so every number equals the single-process one bit for bit.

Default layers: the activation-function modules (ReLU, GELU, SiLU, ...), where "dead" means
something; else every Conv2d and Linear; both when the activation modules are only sigmoids (an
output squash, SE gates) or run in under a tenth of the Conv2d/Linear calls (hidden activations
called as functions, ``F.relu``). ``meta["layers_rule"]`` says which rule picked them. A module
called several times in one forward (a shared ReLU) gets one row per call, ``name@i``; rows come
in the order the calls run. A layer returning a tuple whose first element is a map or tokens
of the batch (a Hugging Face block's or stage's ``(hidden_states, …)``) is read as that element,
as CAMs and features read it. A layer named that returns no tensor (a dict, another tuple) or
does not run in the forward is refused; one a pattern or the default picked is left out with a
warning (all of them: refused).

A batch whose in-place write destroyed a capture the probe could not re-run (the model has
hooks of its own) is run again, now with every write guarded (no grad, eval mode: the same
output; the model's own hooks see that batch twice).
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import AnalyzerError
from ..few_images import on_fewest
from ..fresh_input import fresh
from ..image_axis import ImageAxis
from ..layer_call import LayerCall
from ..layers import resolve_layers
from ..probes import probe
from .base import Analyzer, Result, Run
from .specs import STATS
from .stats_layers import (
    REMEDY,
    call_order,
    channel_axis,
    children_ran,
    default_stats_layers,
    default_stats_rule,
    is_activation,
    learn,
    listed,
    named_selections,
    not_run,
    outputs,
    overwritten,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = [
    "LayerStats",
    "StatsAnalyzer",
    "StatsResult",
    "default_stats_layers",
    "default_stats_rule",
    "is_activation",
]

# activations whose negative outputs carry their input on (a slope or an exponential's
# saturation down to −α), where "near zero" and "dead" mean |x| ≤ eps
_SIGNED = (nn.PReLU, nn.LeakyReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU)


@dataclass
class LayerStats:
    """Streaming statistics of one layer's activations (see the module doc)."""

    eps: float = 0.0
    bins: int = 50
    hist_range: tuple[float, float] | None = None
    count: int = 0
    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    near_zero: int = 0
    signed: bool = False  # an activation layer: |x| ≤ eps when its outputs run below −eps
    near_zero_abs: int = 0
    unit_absmax: torch.Tensor | None = None
    underflow: int = 0
    overflow: int = 0
    nan: int = 0
    inf: int = 0
    unit_max: torch.Tensor | None = None
    hist: np.ndarray | None = None
    edges: np.ndarray | None = field(default=None, repr=False)
    moments: list[tuple[int, float, float]] = field(default_factory=list, repr=False)
    where: ImageAxis = field(default_factory=ImageAxis, repr=False)
    ndim: int = 0  # the layer's output's, images included

    def update(self, act: torch.Tensor, where: ImageAxis | None = None) -> None:
        """Add a batch of activations, the images on ``where`` (default: first, N×...)."""
        self.where, self.ndim = where or ImageAxis(), act.dim()
        t = _values(act)
        n_b = t.numel()
        if n_b == 0:
            return
        self.count += n_b
        ok = torch.isfinite(t)
        n_ok = int(ok.sum())
        if n_ok < n_b:
            n_nan = int(torch.isnan(t).sum())
            self.nan, self.inf = self.nan + n_nan, self.inf + n_b - n_ok - n_nan
        if n_ok:
            vals = t if n_ok == n_b else t[ok]
            var_b, mean_b = torch.var_mean(vals.double(), correction=0)
            self._fold(n_ok, float(mean_b), float(var_b) * n_ok)
            self.low, self.high = (
                min(self.low, float(vals.min())),
                max(self.high, float(vals.max())),
            )
        self.near_zero += int((t <= self.eps).sum())
        self._unit_max(_units(t, self.where))
        if self.signed:
            self.near_zero_abs += int((t.abs() <= self.eps).sum())
            self._unit_absmax(_units(t.abs(), self.where))
        self._histogram(t.numpy().ravel().astype(np.float64, copy=False))

    def _fold(self, n_b: int, mean_b: float, m2_b: float) -> None:
        """Chan et al.'s merge of one batch's (count, mean, M2) of finite values; the batch is
        kept for merges."""
        n = self.finite + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.finite * n_b / n
        self.finite = n
        self.moments.append((n_b, mean_b, m2_b))

    def _unit_max(self, batch_max: torch.Tensor) -> None:
        if self.unit_max is None:
            self.unit_max = batch_max
        elif self.unit_max.shape != batch_max.shape:
            raise AnalyzerError(
                f"activation shape changed between batches "
                f"({tuple(self.unit_max.shape)} vs {tuple(batch_max.shape)}); "
                "use inputs of one size"
            )
        else:
            self.unit_max = torch.maximum(self.unit_max, batch_max)

    def _unit_absmax(self, batch_max: torch.Tensor) -> None:
        um = self.unit_absmax
        self.unit_absmax = batch_max if um is None else torch.maximum(um, batch_max)

    @property
    def zero_rule(self) -> str:
        """``|x| ≤ eps`` for an activation layer whose finite outputs ran below −eps, else
        ``x ≤ eps`` (see the module doc)."""
        return "|x| ≤ eps" if self.signed and self.finite and self.low < -self.eps else "x ≤ eps"

    def merge(self, later: LayerStats) -> None:
        """Add the statistics of the batches that came after this one's (another rank's share).

        Exact: the later batches' moments are folded one by one, as :meth:`update` folded them,
        and counts, extremes and histograms (same edges) add up or take the maximum.
        """
        if later.hist is not None and self.hist is not None:
            if not np.array_equal(later.edges, self.edges):  # type: ignore[arg-type]
                raise AnalyzerError("partial statistics with different histogram edges")
            self.hist = self.hist + later.hist
        elif later.hist is not None:
            self.edges, self.hist = later.edges, later.hist.copy()
        for n_b, mean_b, m2_b in later.moments:
            self._fold(n_b, mean_b, m2_b)
        self.count += later.count
        self.nan += later.nan
        self.inf += later.inf
        self.low, self.high = min(self.low, later.low), max(self.high, later.high)
        self.near_zero += later.near_zero
        self.near_zero_abs += later.near_zero_abs
        if later.unit_absmax is not None:
            self._unit_absmax(later.unit_absmax)
        self.underflow += later.underflow
        self.overflow += later.overflow
        if later.unit_max is not None:
            self._unit_max(later.unit_max)
        if not self.ndim:
            self.where, self.ndim = later.where, later.ndim

    def _histogram(self, values: np.ndarray) -> None:
        if self.edges is None:
            self.edges = histogram_edges(values, self.bins, self.hist_range)
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.int64)
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        counts, _ = np.histogram(values, bins=self.bins, range=(lo, hi))
        self.hist += counts
        self.underflow += int((values < lo).sum())
        self.overflow += int((values > hi).sum())

    @property
    def std(self) -> float:
        """Population standard deviation of all finite values seen."""
        return float(np.sqrt(self.m2 / self.finite)) if self.finite else float("nan")

    def row(
        self, layer: str, channels_last: bool = False, channel_axis: int | None = None
    ) -> dict[str, Any]:
        """The table row for this layer (``channels_last``: its output is N×H×W×C or N×L×C
        tokens, not N×C×H×W or N×C×L; ``channel_axis``, when given: the channels' axis of a
        unit array, :attr:`unit_max`)."""
        absolute = self.zero_rule == "|x| ≤ eps"
        um = self.unit_max if self.unit_max is not None else torch.zeros(0)
        um = self.unit_absmax if absolute and self.unit_absmax is not None else um
        dead_units = um <= self.eps
        near = self.near_zero_abs if absolute else self.near_zero
        ax = channel_axis if channel_axis is not None else um.dim() - 1 if channels_last else 0
        some = bool(self.finite)  # else no finite value: NaN, not the empty fold's 0 and ±inf
        per_channel = (
            dead_units.movedim(ax, 0).reshape(um.shape[ax], -1).all(dim=1)
            if um.dim()
            else dead_units.reshape(1)
        )
        return {
            "layer": layer,
            "shape": list(um.shape),
            "values": self.count,
            "mean": self.mean if some else float("nan"),
            "std": self.std,
            "min": self.low if some else float("nan"),
            "max": self.high if some else float("nan"),
            "near_zero": near / self.count if self.count else float("nan"),
            "dead_units": float(dead_units.double().mean()) if um.numel() else float("nan"),
            "dead_channels": float(per_channel.double().mean()),
            "channels": int(len(per_channel)),
            "underflow": self.underflow,
            "overflow": self.overflow,
            "nan": self.nan,
            "inf": self.inf,
            "zero_rule": self.zero_rule,
        }


def _values(act: torch.Tensor) -> torch.Tensor:
    """A layer's output on the CPU to measure: float64 stays float64, the rest (half, bfloat16,
    float32, integers) becomes float32."""
    t = act.detach().to("cpu")
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def _units(t: torch.Tensor, where: ImageAxis) -> torch.Tensor:
    """Every unit's maximum over the images of ``t`` (the images on ``where``): an array of
    one image's share of the output (``groups`` kept in place of the images' axis when over 1:
    Swin's windows)."""
    if where.element_shape(tuple(t.shape)) is None:
        raise AnalyzerError(
            f"an output of {'×'.join(map(str, t.shape))} does not hold whole images on axis "
            f"{where.axis} ({where.groups} entries each), as the first batch did; {REMEDY}"
        )
    if where.axis is None:  # the output holds no images: its values are the units'
        return t
    if where.first:
        return t.amax(dim=0)
    units = where.split(t).amax(dim=where.axis)
    return units.squeeze(where.axis) if where.groups == 1 else units


def histogram_edges(
    values: np.ndarray, bins: int, hist_range: tuple[float, float] | None
) -> np.ndarray:
    """``bins + 1`` edges over ``hist_range``, else over the values' finite range widened by 10%."""
    finite = values[np.isfinite(values)]
    seen = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    lo, hi = hist_range or seen
    if not hist_range:
        pad = 0.1 * (hi - lo) if hi > lo else 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


@dataclass(frozen=True)
class StatsResult(Result):
    """Per-layer statistics: ``table`` rows; ``arrays``: ``L:hist``, ``L:edges``, ``L:unit_max``."""

    def headline(self) -> str:
        worst = max(self.table, key=lambda r: r["dead_units"])
        return (
            f"stats of {len(self.table)} layers over {self.meta['samples']} samples; most dead "
            f"units: {worst['layer']} ({worst['dead_units']:.1%})"
        )

    def figures(self) -> dict[str, Figure]:
        from ..render.stats_figures import dead_fraction_figure, histograms_figure

        rows = self.table
        hists = [
            (
                r["layer"],
                self.arrays[f"{r['layer']}:hist"],
                self.arrays[f"{r['layer']}:edges"],
                r["mean"],
                r["std"],
                (r["underflow"] + r["overflow"]) / max(r["values"], 1),
            )
            for r in rows
        ]
        return {
            "stats-dead": dead_fraction_figure(rows, self.meta),
            "stats-histograms": histograms_figure(hists, self.meta),
        }


class StatsAnalyzer(Analyzer):
    """Per-layer mean, std, near-zero/dead fractions and histograms over a dataset."""

    spec = STATS
    reads_labels = False  # activations only: any images will do

    def compute(self, run: Run) -> StatsResult:
        """One streaming pass over the data, updating every layer's statistics per batch."""
        o, model = run.options, run.lens.model
        auto = o.layers in (None, "", "auto")
        rule = None
        if auto:
            picked, rule = default_stats_rule(model, _example(run))
        else:
            picked = resolve_layers(model, o.layers)
        names = [n if isinstance(n, LayerCall) else LayerCall(n) for n in picked]
        run.layers = names
        named = set() if auto else named_selections(model, o.layers)
        rng = _range(o.hist_range)
        stats, seen, ran, left_out = _stream(run, names, named, rng)
        silent = [str(n) for n in names if str(n) not in ran] if seen else []
        refused = [n for n in silent if n in named] or (
            silent if not stats and len(silent) == len(names) else []
        )
        if refused:  # named ones, or every layer picked: a pattern's others are left out
            every = " (none of the layers picked did)" if not stats and len(refused) > 1 else ""
            raise not_run(model, refused, every, children_ran(model, refused, _example(run)))
        if not stats and seen:
            raise AnalyzerError(
                f"{listed(names)} return(s) no tensor (a dict, another object, or a tuple "
                "whose first element is no map or tokens of the batch); pick layers that "
                "return tensors, e.g. a module inside (see `netlens layers MODEL`)"
            )
        if not stats:
            raise AnalyzerError("no data passed through the model (the dataset is empty?)")
        arrays: dict[str, np.ndarray] = {}
        for k, s in stats.items():
            arrays[f"{k}:hist"] = s.hist
            arrays[f"{k}:edges"] = s.edges
            arrays[f"{k}:unit_max"] = s.unit_max.numpy()
        meta = {"layers": list(stats), "samples": seen, "eps": o.eps, "bins": o.bins}
        meta["hist_range"] = rng
        if rule is not None:
            meta["layers_rule"] = rule
        meta["unit"] = (
            "one element of a layer's output for one input (conv: channel×y×x; tokens: "
            "token×feature, wherever the layer puts the images); dead = ≤ eps for every input "
            "(|x| ≤ eps on activation layers whose outputs run below −eps: each row's zero_rule)"
        )
        warnings = _warnings(stats, silent, left_out)
        if warnings:
            meta["warnings"] = warnings
        rows = [
            s.row(k, channel_axis=channel_axis(model, k, s.ndim, s.where)) for k, s in stats.items()
        ]
        return StatsResult("stats", arrays, rows, meta)


def _warnings(stats: dict[str, LayerStats], silent: list[str], left_out: list[str]) -> list[str]:
    """Lines on what the table leaves out: calls that did not run or return no tensor, and
    NaN/inf values (outside the moments, extremes and histogram bins)."""
    lines = []
    if silent:
        lines.append(
            f"{listed(silent)} did not run in the model's forward (modules it does not call "
            "in eval mode: auxiliary heads, unused branches): left out"
        )
    if left_out:
        lines.append(
            f"{listed(left_out)} return(s) no tensor (a tuple, dict or other object): left "
            "out; name a module inside that returns a tensor (see `netlens layers MODEL`)"
        )
    for k, s in stats.items():
        if s.nan or s.inf:
            lines.append(
                f"'{k}': {s.nan} NaN and {s.inf} infinite values of {s.count} (counted in nan "
                "and inf; mean, std, min, max and the histogram's bins are over the finite ones)"
            )
    return lines


def _stream(
    run: Run, names: list[LayerCall], named: set[str], rng: tuple[float, float] | None
) -> tuple[dict[str, LayerStats], int, set[str], list[str]]:
    """Every layer's statistics over the data, all processes' parts combined in data order,
    rows in the order the calls run; the selections that ran (gave any output, a tensor or
    not); the calls a pattern picked that return no tensor (left out)."""
    o, lens = run.options, run.lens
    modules = dict(lens.model.named_modules())
    edges: dict[str, np.ndarray] = {}
    if rng is None and run.group.world > 1:  # every rank bins like the first batch says
        edges = run.group.broadcast(lambda: _first_edges(run, names, int(o.bins)))
    stats: dict[str, LayerStats] = {}
    slots: dict[str, Any] = {}
    seen, ran, layout = 0, set(), None
    with (
        torch.no_grad(),
        ExitStack() as stack,
        run.progress.task("activation stats", len(run.data)) as advance,
    ):
        for x, _ in run.data.loader(o.batch_size):
            x = x.to(lens.device)
            if layout is None:  # learnt on the first batch, before any statistics
                layout = learn(lens.model, x, names, named)
                ran |= {str(n) for n in names if n not in layout.names}  # returned no tensor
                p = stack.enter_context(
                    probe(lens.model, layout.names, to="cpu", first_of_tuple=True)
                )
            state = torch.get_rng_state()
            lens.model(fresh(x))
            if overwritten(p):  # an input-dependent in-place write the probe could not re-run
                p.clear()  # (other hooks on the model); it guards every write from now on
                torch.set_rng_state(state)  # the same draws (test-time noise) again
                lens.model(fresh(x))
            ran |= {str(n) for n in layout.names if p[n].outputs}
            for key, slot, out in outputs(p, layout.names, layout.calls):
                if isinstance(out, torch.Tensor):
                    new = LayerStats(o.eps, int(o.bins), rng, edges=edges.get(key))
                    mod = modules.get(str(key).split("@")[0].split(":")[0])
                    new.signed = isinstance(mod, _SIGNED)
                    stats.setdefault(key, new).update(out, layout.axis(slot))
                    slots.setdefault(key, slot)
            p.clear()
            seen += len(x)
            advance(len(x))
    if layout is not None:  # rows in the order the calls ran
        stats = dict(sorted(stats.items(), key=lambda kv: layout.place(slots[kv[0]])))
    left_out = layout.left_out if layout is not None else []
    return _combine(run.group.gather((stats, seen, ran, left_out)))


def _example(run: Run) -> torch.Tensor | None:
    """One input to count the default layers' calls on: the model's example, else the data's
    first item; None when neither is at hand (the layers' modules are counted instead)."""
    try:
        return run.lens.example()
    except Exception:  # noqa: BLE001 - no known input size: the data's first item
        try:
            x = torch.as_tensor(run.data.dataset[0][0])[None]
            return x.to(run.lens.device)
        except Exception:  # noqa: BLE001 - unreadable: told at the first forward instead
            return None


def _first_edges(run: Run, names: list[LayerCall], bins: int) -> dict[str, np.ndarray]:
    """Histogram edges per layer call from the data's first batch (what one process uses)."""
    model = run.lens.model
    modules = list(dict.fromkeys(n.name for n in names))
    with torch.no_grad():
        for x, _ in run.data.loader(run.options.batch_size, whole=True):
            x = x.to(run.lens.device)
            order = on_fewest(lambda few: call_order(model, few, modules), x)
            calls = Counter(m for m, _ in order)
            with probe(model, names, to="cpu", first_of_tuple=True) as p:
                model(fresh(x))
                return {
                    k: histogram_edges(_values(o).numpy().ravel(), bins, None)
                    for k, _, o in outputs(p, names, calls)
                    if isinstance(o, torch.Tensor)
                }
    return {}


def _combine(
    parts: list[tuple[dict[str, LayerStats], int, set[str], list[str]]],
) -> tuple[dict[str, LayerStats], int, set[str], list[str]]:
    """Every rank's partial statistics merged in rank order (the order of the batches)."""
    stats: dict[str, LayerStats] = {}
    for part, _, _, _ in parts:
        for key, s in part.items():
            if key in stats:
                stats[key].merge(s)
            else:
                stats[key] = s
    ran = set().union(*(r for _, _, r, _ in parts))
    left_out = list(dict.fromkeys(k for *_, lo in parts for k in lo))
    return stats, sum(n for _, n, _, _ in parts), ran, left_out


def _range(value: Any) -> tuple[float, float] | None:
    """``hist_range`` as (low, high): a pair, or a "low,high" string (from the CLI)."""
    if value is None or value == "":
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise AnalyzerError(f"hist_range must be two numbers low,high; got {value!r:.60}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise AnalyzerError(f"hist_range must be finite numbers; got {lo:g},{hi:g}")
    if not lo < hi:
        raise AnalyzerError(f"hist_range low must be below high; got {lo:g},{hi:g}")
    return lo, hi
