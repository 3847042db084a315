"""Layer-ablation studies: switch parts of a trained model off and measure what each is worth.

``netlens.ablate(model, data)`` / ``lens.ablate(data)`` / ``netlens ablate MODEL --data DIR``.
By default every residual block is skipped in turn (Veit et al., 2016); ``channels=True`` sweeps
the channels of one layer (Morcos et al., 2018). Ablations reuse a cached prefix of the network
(see :mod:`.engine`), so they are fast and give the same logits, bit for bit, as re-running the
whole model with the unit switched off.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...errors import AnalyzerError
from ...plugins import hookimpl
from ..base import Analyzer, Option, Run
from ..options import as_is
from . import channels as ch
from .engine import Ablation, Engine, hooked, run_ablations
from .metrics import check_metric
from .modes import UnitStats, check_mode, shape_message, unit_replacement
from .result import AblationResult, PartialCsv, StudyRows, curve_arrays
from .units import Unit, select_units

if TYPE_CHECKING:
    from ...lens import Lens
    from ...plugins.registry import Registry

__all__ = ["AblateAnalyzer", "AblationResult", "ablate"]


def _as_lens(model_or_lens: Any) -> Lens:
    from ...lens import Lens

    return model_or_lens if isinstance(model_or_lens, Lens) else Lens(model_or_lens)


def _shapes(model: nn.Module, units: list[Unit], x: torch.Tensor) -> dict[str, tuple]:
    """(input shape, output shape) of each unit from one forward on one image."""
    shapes: dict[str, tuple] = {}
    with ExitStack() as stack:
        for u in units:

            def hook(m: nn.Module, i: tuple, o: Any, name: str = u.name) -> None:
                if isinstance(o, torch.Tensor) and isinstance(i[0], torch.Tensor):
                    shapes.setdefault(name, (tuple(i[0].shape), tuple(o.shape)))

            stack.enter_context(hooked(model.get_submodule(u.name), hook))
        model(x[:1])
    missing = [u.name for u in units if u.name not in shapes]
    if missing:
        raise AnalyzerError(f"unit(s) {', '.join(missing)} did not run or returned no tensor")
    return shapes


def _stats(
    model: nn.Module, units: list[Unit], loader: Any, device: torch.device, advance: Any
) -> dict[str, UnitStats]:
    """Per-element mean and std of each unit's output over the data (the first pass)."""
    stats = {u.name: UnitStats() for u in units}
    with ExitStack() as stack:
        for u in units:
            stack.enter_context(
                hooked(model.get_submodule(u.name), lambda m, i, o, s=stats[u.name]: s.add(o))
            )
        for x, _ in loader:
            model(x.to(device))
            advance(1)
    return stats


def _check_identity(
    units: list[Unit], shapes: dict[str, tuple], explicit: bool
) -> tuple[list[Unit], list[str]]:
    keep, skipped = [], []
    for u in units:
        shape_in, shape_out = shapes[u.name]
        if u.residual or shape_in == shape_out:
            keep.append(u)
        elif explicit:
            raise AnalyzerError(shape_message(u.name, shape_in, shape_out))
        else:
            skipped.append(u.name)
    if not keep:
        raise AnalyzerError(
            f"identity cannot skip any default unit (all change shape: "
            f"{', '.join(skipped[:4])}...); use --mode zero or --mode mean"
        )
    return keep, skipped


def ablate(
    model: Any,
    data: Any,
    layers: Any = None,
    mode: str | None = None,
    metric: str = "accuracy",
    *,
    channels: bool = False,
    out: str | Path | None = None,
    resume: bool = False,
    batch_size: int = 64,
    limit: int | None = None,
    seed: int = 0,
    resamples: int = 1000,
    points: int = 17,
    fast: bool = True,
    quiet: bool = True,
    cache_mb: int = 1024,
) -> AblationResult:
    """Run a layer-ablation study on a Lens or a bare ``nn.Module``.

    Args:
        model: a :class:`netlens.Lens` or an ``nn.Module``.
        data: folder with class subfolders, dataset name, Dataset, DataLoader or (images, labels).
        layers: unit selector (names, globs, ``type:X``); None: every residual block, else each
            top-level child of the feature stack.
        mode: ``identity`` (default for blocks), ``zero`` (default for channels), ``mean``,
            ``noise``.
        metric: ``accuracy``, ``loss``, ``f1`` (macro) or ``top5``.
        channels: ablate each channel of the single selected layer, plus cumulative curves.
        out: folder for the row-by-row ``ablation.csv`` (needed for ``resume``).
        resume: keep rows already in ``out/ablation.csv`` made with the same settings.
        fast: use the cached-prefix path (False: re-run the whole model per ablation).

    Example:
        >>> res = netlens.ablate(model, (images, labels))
        >>> res.baseline["value"], [(r["unit"], r["drop"]) for r in res.rows]
    """
    from ...data import as_loader
    from ...layers import eval_mode

    lens = _as_lens(model)
    net = lens.model
    mode = check_mode(mode or ("zero" if channels else "identity"))
    mode = "zero" if channels and mode == "identity" else mode
    metric = check_metric(metric)
    units, explicit = select_units(net, layers)
    if channels and len(units) != 1:
        raise AnalyzerError("channel ablation needs exactly one layer: pass --layers NAME")
    loader = as_loader(data, lens.transform, host=lens.host, batch_size=batch_size, limit=limit)
    if isinstance(loader.sampler, torch.utils.data.RandomSampler):
        raise AnalyzerError(
            "the DataLoader shuffles; pass one with shuffle=False so every "
            "ablation sees the same images in the same batches"
        )
    classes = lens.classes or getattr(loader.dataset, "classes", None)
    started = time.perf_counter()
    with torch.no_grad(), eval_mode(net), ExitStack() as stack:
        x0, _ = next(iter(loader))
        shapes = _shapes(net, units, x0.to(lens.device))
        skipped: list[str] = []
        if mode == "identity":
            units, skipped = _check_identity(units, shapes, explicit)
        config = {
            "model": lens.name,
            "units": [u.name for u in units],
            "mode": mode,
            "metric": metric,
            "channels": channels,
            "seed": seed,
            "limit": limit,
            "images": len(loader.dataset),
            "resamples": resamples,
            "points": points,
        }
        csv = PartialCsv(out, config, resume) if out is not None else None
        engine = Engine(net, [u.name for u in units], fast=fast)
        engine.check(x0[:8].to(lens.device))
        study = StudyRows(
            metric,
            mode,
            classes,
            {u.name: u for u in units},
            lambda u: "cached" if engine.is_fast(u) else "naive",
            csv,
            resamples,
            seed,
        )
        progress = stack.enter_context(_progress(quiet))
        stats = None
        if mode in ("mean", "noise"):
            task = progress.add_task("statistics", total=len(loader))
            stats = _stats(net, units, loader, lens.device, lambda k: progress.advance(task, k))
        plan = _Plan(
            engine,
            loader,
            units,
            study,
            shapes,
            stats,
            mode,
            seed,
            points,
            progress,
            lens.device,
            cache_mb << 20,
        )
        _channel_study(plan) if channels else _block_study(plan)
    return _result(lens, study, units, mode, metric, channels, skipped, engine, started, csv)


def _progress(quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=True,
    )


@dataclass
class _Plan:
    """Everything a block or channel study runs with."""

    engine: Engine
    loader: Any
    units: list[Unit]
    study: StudyRows
    shapes: dict[str, tuple]
    stats: dict[str, UnitStats] | None
    mode: str
    seed: int
    points: int
    progress: Any
    device: torch.device
    budget: int

    def run(self, ablations: list[Ablation], label: str) -> None:
        total = sum(len(a.keys) for a in ablations) * len(self.loader)
        task = self.progress.add_task(f"{label} (ablations × batches)", total=total)
        first = self.study.baseline if self.study.needs_baseline else None
        run_ablations(
            self.engine,
            self.loader,
            ablations,
            self.study.done,
            first,
            device=self.device,
            advance=lambda k: self.progress.advance(task, k),
            budget=self.budget,
        )
        self.study.base()

    def unit_stats(self, unit: str) -> UnitStats | None:
        return self.stats[unit] if self.stats else None


def _block_study(plan: _Plan) -> None:
    net = plan.engine.model
    abls = [
        Ablation(
            [u.name],
            u.name,
            unit_replacement(
                u,
                net.get_submodule(u.name),
                plan.mode,
                plan.unit_stats(u.name),
                seed=plan.seed,
                key=i,
            ),
        )
        for i, u in enumerate(plan.units)
        if u.name not in plan.study.rows
    ]
    plan.run(abls, "blocks")


def _channel_study(plan: _Plan) -> None:
    unit = plan.units[0].name
    out_shape = plan.shapes[unit][1]
    if len(out_shape) < 2:
        raise AnalyzerError(f"'{unit}' has no channel dimension (output {out_shape})")
    n_ch, per = out_shape[1], int(np.prod(out_shape[1:]))
    fast = plan.engine.is_fast(unit)
    group = ch.group_size(per, plan.loader.batch_size or 1) if fast else 1
    kw = {"seed": plan.seed, "group": group, "skip": set(plan.study.rows)}
    st = plan.unit_stats(unit)
    plan.run(ch.channel_ablations(unit, n_ch, plan.mode, st, **kw), f"channels of {unit}")
    drops = np.array([plan.study.rows[ch.channel_key(unit, c)]["drop"] for c in range(n_ch)])
    order = ch.orders(drops, plan.seed)
    curves = ch.curve_ablations(unit, n_ch, order, plan.mode, st, points=plan.points, **kw)
    plan.run(curves, "cumulative curves")


def _result(
    lens: Lens,
    study: StudyRows,
    units: list[Unit],
    mode: str,
    metric: str,
    channels: bool,
    skipped: list[str],
    engine: Engine,
    started: float,
    csv: PartialCsv | None,
) -> AblationResult:
    rows = list(study.rows.values())
    rows.sort(key=lambda r: (r["kind"] != "baseline", r["kind"].startswith("curve")))
    base = study.rows["baseline"]
    meta = {
        "model": lens.name,
        "mode": mode,
        "metric": metric,
        "channels": channels,
        "units": [u.name for u in units],
        "skipped_units": skipped,
        "classes": study.classes,
        "baseline": {
            "value": base["value"],
            "value_lo": base["value_lo"],
            "value_hi": base["value_hi"],
            "n": len(study.base()["label"]),
        },
        "paths": {u.name: "cached" if engine.is_fast(u.name) else "naive" for u in units},
        "trace_error": engine.trace_error,
        "seconds": round(time.perf_counter() - started, 3),
        "resumed": study.resumed,
    }
    arrays = curve_arrays(rows)
    arrays["drop"] = np.array(
        [r["drop"] for r in rows if r["kind"] in ("residual", "layer", "channel")]
    )
    return AblationResult(name="ablation", arrays=arrays, table=rows, meta=meta)


class AblateAnalyzer(Analyzer):
    """Layer-ablation study: switch blocks (or channels) off and measure the metric drop."""

    name = "ablate"
    description = "switch blocks or channels off and measure what each is worth"
    takes = "data"
    options = (
        Option("layers", None, "units to ablate (default: every residual block)", as_is),
        Option("mode", None, "identity, zero, mean or noise", as_is),
        Option("metric", "accuracy", "accuracy, loss, f1 or top5", str),
        Option("channels", False, "ablate each channel of the one selected layer", bool),
        Option("out", None, "folder for the row-by-row CSV (resume)", as_is),
        Option("resume", False, "keep finished rows from an earlier run", bool),
        Option("batch_size", 64, "images per batch", int, low=1),
        Option("limit", None, "use the first N images", int, low=1),
        Option("seed", 0, "seed for noise, bootstrap and random orders", int),
        Option("resamples", 1000, "bootstrap resamples", int, low=10),
        Option("points", 17, "points on the cumulative curves", int, low=2),
        Option("fast", True, "use the cached-prefix engine", bool),
        Option("quiet", True, "no progress bar", bool),
        Option("cache_mb", 1024, "memory for cached activations", int, low=1),
    )

    def compute(self, run: Run) -> AblationResult:
        opts = {k: v for k, v in run.options.items() if k != "limit"}
        return ablate(run.lens, run.data.dataset, **opts)


@hookimpl
def netlens_register_analyzers(registry: Registry) -> None:
    registry.add("ablate", AblateAnalyzer(), description=AblateAnalyzer.__doc__ or "")
