"""The study itself: pick the units, run every ablation over the data, make the rows.

A block study switches each unit off in turn; a channel study switches off each channel of one
layer, then cumulative sets of channels in order of importance and in a random order. All passes
go through the cached-prefix engine (:mod:`.engine`); the data is streamed from ``run.data`` as
often as needed (the statistics pass, then the ablations), progress is reported to
``run.progress`` and every finished row is kept in ``run.storage`` at once, so a study that is
interrupted resumes where it stopped.

Sharded over processes (torchrun), each rank streams its share of the batches through every
ablation; a variant's per-image outcomes are gathered in data order before its row is made, so
rows (bootstrap intervals included) equal one process's bit for bit. Noise is seeded by the
batch's number in the whole data. The mean/noise statistics pass adds the ranks' float64 sums,
equal to one pass up to their reassociation.

The baseline pass also hashes each batch it reads (input tensor and labels): the digest, kept
with the intact model's row, is what a resume checks its kept rows against, so rows made on
other images are never mixed in, whatever the data object exposes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...activations import channels_last
from ...errors import AnalyzerError
from ...few_images import on_fewest
from ...fresh_input import fresh
from ...image_axis import ImageAxis, image_axes
from . import channels as ch
from .engine import Ablation, Engine, hooked, run_ablations
from .fingerprint import batch_digest, data_fingerprint, images_digest
from .modes import UnitStats, collect_call, merge_calls, shape_message, unit_replacement
from .result import AblationResult, curve_arrays
from .rows import StudyRows, columns, parse_cell
from .scoring import METRICS, MULTILABEL_METRICS, Metric, Outcomes
from .units import Unit, find_units

if TYPE_CHECKING:
    from ..base import Run

__all__ = ["ROWS_NAME", "study"]

#: The name of the study's row file (``OUT/ablation.csv`` from the CLI).
ROWS_NAME = "ablation"
_ROWS_VERSION = 3  # bump when the row columns change: older row files are not resumed


class _Pairs:
    """The run's batches as ``(x, labels or None)``, re-iterable, with their count (and, in a
    distributed run, ``first``: the number of this share's first batch; ``shared``: it is a
    share, which may have no batch). While ``digests`` is a dict, each batch read is hashed
    into it by its number in this share (once)."""

    def __init__(self, batches: Any, shared: bool = False) -> None:
        self.batches, self.shared = batches, shared
        self.batch_size = getattr(batches, "batch_size", None) or 1
        self.first = getattr(batches, "first", 0)
        self.digests: dict[int, bytes] | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for i, b in enumerate(self.batches):
            if isinstance(b, torch.Tensor):
                x, y = b, None
            else:
                x, y = b[0], (b[1] if len(b) > 1 else None)
            if self.digests is not None and i not in self.digests:
                self.digests[i] = batch_digest(x, y)
            yield x, y

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class _Plan:
    """Everything a block or channel study runs with."""

    run: Run
    metric: Metric
    mode: str
    units: list[Unit]
    skipped: list[str]
    engine: Engine
    loader: _Pairs
    rows: StudyRows
    device: torch.device
    stats: dict[str, list[UnitStats]] | None = None  # per unit, one per call in a pass
    task: str = "multiclass"  # how the outputs are read (multilabel: the labels' sigmoids)
    config: dict[str, Any] | None = None  # the settings the rows are made with

    def ablate(self, ablations: list[Ablation], label: str) -> None:
        """Run ``ablations`` over the data (and the baseline, the first time)."""
        total = sum(len(a.keys) for a in ablations) * len(self.run.data)  # type: ignore[arg-type]
        first = self.rows.baseline if self.rows.needs_baseline else None
        opts, group = self.run.options, self.run.group
        if first is not None:  # the baseline pass reads every image: hash them as it goes
            self.loader.digests = {}
        self.rows.expect(ablations)

        def done(key: str, out: Outcomes) -> None:  # every rank's images, then the row
            self._join_baseline(first)
            self.rows.done(key, _joined(group, out))

        with self.run.progress.task(label, total=total or None) as advance:
            run_ablations(
                self.engine,
                self.loader,
                ablations,
                done,
                first,
                self.metric,
                device=self.device,
                advance=advance,
                budget=opts.cache_mb << 20,
            )
        self._join_baseline(first)
        self.rows.base()

    def _join_baseline(self, first: Outcomes | None) -> None:
        """The intact model's outcomes from every rank, and the digest of the images they were
        read from, once, before its row (or any) is made."""
        if first is not None and self.loader.digests is not None:
            digests = [d for _, d in sorted(self.loader.digests.items())]
            self.loader.digests = None
            if self.run.group.world > 1:  # every share's batches, in data order
                digests = [d for part in self.run.group.gather(digests) for d in part]
            self.rows.images = images_digest(digests)
        if first is not None and self.rows.baseline is first and self.run.group.world > 1:
            self.rows.baseline = _joined(self.run.group, first)

    def unit_stats(self, unit: str) -> list[UnitStats] | None:
        return self.stats[unit] if self.stats else None


def _joined(group: Any, out: Outcomes) -> Outcomes:
    """One variant's outcomes from every rank, in rank order: the order of the data."""
    if group.world == 1:
        return out
    parts = group.gather((out.preds, out.base_preds, out.labels, out.values, out.num_classes))
    joined = [[a for p in parts for a in p[i]] for i in range(4)]
    return Outcomes(out.metric, *joined, num_classes=max(p[4] for p in parts))


def _mode(run: Run) -> str:
    mode = run.options.mode or ("zero" if run.options.channels else "identity")
    return "zero" if run.options.channels and mode == "identity" else mode


def _check_identity(units: list[Unit], explicit: bool) -> tuple[list[Unit], list[str]]:
    """The units identity can skip (blocks, same-shape layers) and the names of the others."""
    keep = [u for u in units if u.residual or u.shape_in == u.shape_out]
    skipped = [u.name for u in units if u not in keep]
    if skipped and explicit:
        u = next(u for u in units if u.name == skipped[0])
        raise AnalyzerError(shape_message(u.name, u.shape_in, u.shape_out))
    if not keep:
        raise AnalyzerError(
            f"identity cannot skip any default unit (all change shape: "
            f"{', '.join(skipped[:4])}...); use --mode zero or --mode mean"
        )
    return keep, skipped


def _check_tensors(units: list[Unit], explicit: bool) -> tuple[list[Unit], list[str]]:
    """The units that return a tensor, or a tuple whose first element is one (what an ablation
    replaces: Hugging Face Swin layers return ``(hidden_states, None)``), and the names of the
    others (a dict, a model output object, a tuple that starts with no tensor)."""
    keep = [u for u in units if u.shape_out is not None]
    others = [u.name for u in units if u.shape_out is None]
    if others and explicit:
        raise AnalyzerError(
            f"'{others[0]}' returns neither a tensor nor a tuple that starts with one, so it "
            "cannot be switched off; pick layers inside it that return a tensor (see "
            "`netlens layers MODEL`)"
        )
    if not keep:
        raise AnalyzerError(
            f"none of the default units returns a tensor or a tuple that starts with one "
            f"({', '.join(others[:4])}...), so none can be switched off; pick layers that "
            "return a tensor with --layers"
        )
    return keep, others


def _units(run: Run, x0: torch.Tensor, mode: str) -> tuple[list[Unit], list[str]]:
    opts = run.options
    lens = run.lens
    units, explicit = find_units(lens.model, x0, opts.layers, opts.identity_fns, lens.reader)
    if opts.channels and len(units) != 1:
        raise AnalyzerError("channel ablation needs exactly one layer: pass --layers NAME")
    units, others = _check_tensors(units, explicit)
    if mode != "identity":
        return units, others
    try:
        units, skipped = _check_identity(units, explicit)
    except AnalyzerError as exc:
        if isinstance(run.lens.model, torch.fx.GraphModule) and not explicit:
            raise AnalyzerError(  # its blocks no longer run as modules: only leaf layers do
                f"{exc}; this is a torch.fx GraphModule, whose blocks were inlined into its "
                "graph: ablate the model before it was traced"
            ) from None
        raise
    return units, others + skipped


def _config(run: Run, metric: Metric, mode: str, units: list[Unit]) -> dict[str, Any]:
    """The settings a row file is made with (a resume must match them): the weights, the
    preprocessing, the class names rows report, and the data's items and labels (a hash of
    the file paths with their labels, or of the tensors: :func:`.fingerprint.data_fingerprint`)
    besides the options."""
    opts = run.options
    keys = ("channels", "seed", "limit", "resamples", "points", "batch_size")
    return {
        "version": _ROWS_VERSION,
        "model": run.lens.name,
        "sha256": run.lens.digest(),
        "preprocess": run.lens.preprocess_info(),
        "classes": _class_names(run, metric),
        "data": run.data.source,  # type: ignore[union-attr]
        "images": len(run.data),  # type: ignore[arg-type]
        "data_items": data_fingerprint(run.data),
        "units": [u.name for u in units],
        "mode": mode,
        "metric": metric.name,
        **{k: opts[k] for k in keys},
    }


def _first_batch(loader: _Pairs, run: Run) -> torch.Tensor:
    """Up to 8 images of the first readable batch, which the task, the units and the traced
    graph are checked on. In a distributed run a process whose share has none (fewer batches
    than processes, or all its images unreadable) takes them from the first process that has
    some, and still takes part in every exchange."""
    peek = getattr(loader.batches, "peek", None)  # reads one batch, not the whole share
    first = peek() if peek is not None else next(iter(loader), None)
    x = None if first is None else first[0][:8]
    group = run.group
    if group.world > 1:
        has = group.gather(x is not None)
        if any(has) and not all(has):
            src = has.index(True)
            x = group.gather(x if group.rank == src else None)[src]
    if x is None:
        for _ in loader:  # a whole pass says which images could not be read (every process)
            pass
        raise AnalyzerError("no image of the data could be read")
    return x


def _task_metric(run: Run, x: torch.Tensor, metric: Metric) -> tuple[str, Metric]:
    """The model's task, and the metric as it reads that task's outputs: a multi-label
    model's independent sigmoids by the label-free metrics' multi-label forms; one line for
    regression values, and for a label metric (one class per image) on a multi-label model."""
    from ...layers import eval_mode

    with torch.no_grad(), eval_mode(run.lens.model):
        task = run.lens.task_for(run.lens.output(x))
    if task == "regression":
        raise AnalyzerError(
            "ablate scores classifiers (accuracy, the intact class's probability, KL between "
            "softmaxes), but this model's outputs are regression values; its metrics would be "
            "a softmax over them. Pick class scores with --output KEY, or --task if it is a "
            "classifier"
        )
    if task != "multilabel":
        return task, metric
    if metric.name not in MULTILABEL_METRICS:
        raise AnalyzerError(
            f"the {metric.name} metric reads one class per image, but this model is "
            "multi-label (independent sigmoids); use --metric kl, agreement or prob, which "
            "compare each label with the intact model's (--task multiclass if it is "
            "single-label)"
        )
    return task, MULTILABEL_METRICS[metric.name]


def _engine(run: Run, x: torch.Tensor) -> Engine:
    """The engine for the run's units, its traced graph checked on (up to 8 images of) ``x``."""
    engine = Engine(run.lens.model, run.layers or [], fast=run.options.fast, output=run.lens.reader)
    engine.check(x[:8])
    return engine


def _class_names(run: Run, metric: Metric) -> list[str] | None:
    """Names for the classes rows report: the model's; the data's when labels index them."""
    data_classes = getattr(run.data, "classes", None) if metric.needs_labels else None
    return run.lens.classes or data_classes


def _rows(
    run: Run, metric: Metric, mode: str, units: list[Unit], engine: Engine, config: dict
) -> StudyRows:
    store = run.storage.rows(ROWS_NAME, config, columns(metric), parse_cell)
    path_of = lambda u: "cached" if engine.is_fast(u) else "naive"  # noqa: E731
    by_name = {u.name: u for u in units}
    opts = run.options
    classes = _class_names(run, metric)
    return StudyRows(metric, mode, classes, by_name, path_of, store, opts.resamples, opts.seed)


def _plan(run: Run) -> _Plan:
    metric, mode, device = METRICS[run.options.metric], _mode(run), run.lens.device
    loader = _Pairs(run.data.loader(run.options.batch_size), run.group.world > 1)  # type: ignore[union-attr]
    x = _first_batch(loader, run).to(device)
    task, metric = on_fewest(lambda few: _task_metric(run, few, metric), x)
    units, skipped = _units(run, x, mode)
    run.layers = [u.name for u in units]
    engine = _engine(run, x)
    config = _config(run, metric, mode, units) | {"task": task}
    rows = _rows(run, metric, mode, units, engine, config)
    plan = (run, metric, mode, units, skipped, engine, loader, rows, device)
    return _Plan(*plan, task=task, config=config)


def _statistics(plan: _Plan) -> dict[str, list[UnitStats]]:
    """Per-element mean and std of each unit's output over the data (for mean and noise): one
    :class:`UnitStats` per call of the unit within a forward pass, since a module the model
    runs several times (one shared ``nn.ReLU``) outputs other values, maybe at other shapes, at
    each place; each call is then replaced with its own mean."""
    stats: dict[str, list[UnitStats]] = {u.name: [] for u in plan.units}
    calls = dict.fromkeys(stats, 0)
    model = plan.engine.model
    axes: dict[str, list[ImageAxis]] = {}  # where each call's output holds the images

    def hook(name: str, out: Any) -> None:
        if axes:
            collect_call(stats[name], calls[name], out, name, axes[name])
            calls[name] += 1

    with ExitStack() as stack, plan.run.progress.task("statistics", len(plan.run.data)) as advance:
        for u in plan.units:
            stack.enter_context(
                hooked(model.get_submodule(u.name), lambda m, i, o, n=u.name: hook(n, o))
            )
        for x, _ in plan.loader:
            x = x.to(plan.device)
            if not axes:  # learnt on the first batch, before any sums
                axes.update(image_axes(model, x, list(stats)))
            calls.update(dict.fromkeys(calls, 0))  # calls are numbered within each pass
            model(fresh(x))
            advance(len(x))
    if plan.run.group.world == 1:
        return stats
    parts = plan.run.group.gather({k: [s.to("cpu") for s in v] for k, v in stats.items()})
    for part in parts[1:]:  # every rank's sums, added in rank order
        for name, per_call in part.items():
            merge_calls(parts[0][name], per_call)
    return {k: [s.to(plan.device) for s in v] for k, v in parts[0].items()}


def _block_study(plan: _Plan) -> None:
    abls = [
        Ablation(
            [u.name],
            u.name,
            unit_replacement(
                u, plan.mode, plan.unit_stats(u.name), seed=plan.run.options.seed, key=i
            ),
        )
        for i, u in enumerate(plan.units)
        if u.name not in plan.rows.rows
    ]
    plan.ablate(abls, "blocks" if any(u.residual for u in plan.units) else "layers")


def _channel_study(plan: _Plan) -> None:
    unit, opts = plan.units[0], plan.run.options
    shape = unit.shape_out or ()
    if len(shape) < 2:
        raise AnalyzerError(f"'{unit.name}' has no channel dimension (output {shape})")
    # channels last: tokens (N×L×C) and N×H×W×C maps, where ablating axis 1 would remove
    # tokens or rows; a Conv1d's N×C×L has them second
    last = len(shape) in (3, 4) and channels_last(plan.run.lens.model, unit.name, len(shape))
    n_ch, per = (shape[-1] if last else shape[1]), int(np.prod(shape[1:]))
    widths = {s[-1] if last else s[1] for s in unit.call_shapes if s and len(s) == len(shape)}
    if len(widths - {n_ch}) > 0:
        shown = ", ".join(str(w) for w in sorted(widths))
        raise AnalyzerError(
            f"'{unit.name}' runs {len(unit.call_shapes)} times with {shown} channels (one module "
            "shared by layers of different widths): its channels are not one set; ablate a "
            "module that runs once (the conv before a call), or switch the whole module off"
        )
    which = _which_channels(opts.channels, n_ch, unit.name)
    group = ch.group_size(per, plan.loader.batch_size) if plan.engine.is_fast(unit.name) else 1
    kw = {"seed": opts.seed, "group": group, "skip": set(plan.rows.rows), "last": last}
    st = plan.unit_stats(unit.name)
    singles = ch.channel_ablations(unit.name, n_ch, plan.mode, st, which=which, **kw)
    plan.ablate(singles, f"channels of {unit.name}")
    harm = [plan.rows.rows[ch.channel_key(unit.name, c)][plan.metric.harm] for c in which]
    order = {k: np.asarray(which)[p] for k, p in ch.orders(np.array(harm), opts.seed).items()}
    curves = ch.curve_ablations(unit.name, n_ch, order, plan.mode, st, points=opts.points, **kw)
    plan.ablate(curves, "cumulative curves")


def _which_channels(chosen: Any, n_ch: int, unit: str) -> list[int]:
    """The channels to study: all of them, or the listed ones (each checked)."""
    if chosen is True:
        return list(range(n_ch))
    wrong = [c for c in chosen if c >= n_ch]
    if wrong:
        raise AnalyzerError(
            f"channel {wrong[0]} is out of range: '{unit}' has {n_ch} channels (0..{n_ch - 1})"
        )
    return list(chosen)


_CHANCE = {"accuracy": 1, "top5": 5}  # classes a guess gets right, of K


def _chance_warning(plan: _Plan) -> list[str]:
    """One line when the intact model's accuracy is no better than guessing: drops from it
    say little (none from 0), and its labels may not be the model's classes."""
    m, k = plan.metric, plan.rows.k
    base = plan.rows.rows["baseline"]["value"]
    if m.name not in _CHANCE or m.multilabel or not k:
        return []
    chance = min(_CHANCE[m.name], k) / k
    if base > chance or chance >= 1:  # (top-5 of 5 classes or fewer: every guess is right)
        return []
    source = getattr(plan.run.data, "label_source", None)
    return [
        f"the intact model's {m.title} is {base:.3f} on {len(plan.rows.base()['value'])} images, "
        f"no better than chance ({chance:.3f} for {k} classes): "
        f"{'no ablation can lower it' if base == 0 else 'its drops say little'}; are the labels "
        "the model's classes"
        f"{f' ({source})' if source else ''}? --metric prob or kl measure the change from the "
        "model's own predictions"
    ]


def _meta(plan: _Plan) -> dict[str, Any]:
    base, m = plan.rows.rows["baseline"], plan.metric
    return {
        "model": plan.run.lens.name,
        "mode": plan.mode,
        "metric": m.name,
        "metric_title": m.title,
        "direction": m.direction,
        "harm": m.harm,
        "per_class": (
            "kept by intact label"
            if m.multilabel
            else "accuracy by true class"
            if m.needs_labels
            else "agreement by intact class"
        ),
        "task": plan.task,
        "channels": plan.run.options.channels,
        "units": [u.name for u in plan.units],
        "skipped_units": plan.skipped,
        "warnings": [
            f"not ablated: {', '.join(plan.skipped)} (identity cannot skip a layer that changes "
            "the shape; use --mode zero or mean for those)"
        ]
        * bool(plan.skipped)
        + _chance_warning(plan),
        "classes": plan.rows.classes,
        "label_source": getattr(plan.run.data, "label_source", None),
        "baseline": {k: base[k] for k in ("value", "ci_low", "ci_high")}
        | {"n": len(plan.rows.base()["value"])},
        "paths": {u.name: plan.rows.path_of(u.name) for u in plan.units},
        "trace_error": plan.engine.trace_error,
        "resumed": plan.rows.resumed,
    }


def _result(plan: _Plan) -> AblationResult:
    rows = list(plan.rows.rows.values())
    rows.sort(key=lambda r: (r["kind"] != "baseline", r["kind"].startswith("curve")))
    arrays = curve_arrays(rows)
    ablated = [r for r in rows if not r["kind"].startswith(("baseline", "curve"))]
    arrays["delta"] = np.array([r["delta"] for r in ablated])
    meta = _meta(plan)
    return AblationResult(ROWS_NAME, arrays, rows, meta, config=plan.config)


def study(run: Run) -> AblationResult:
    """Run the ablation study ``run`` describes (see the module doc)."""
    with torch.no_grad():
        plan = _plan(run)
        if plan.mode in ("mean", "noise"):
            plan.stats = _statistics(plan)
        _channel_study(plan) if run.options.channels else _block_study(plan)
        return _result(plan)
