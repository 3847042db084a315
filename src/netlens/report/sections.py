"""The report's sections: each one calls the analyzers the commands call and keeps their Results.

A builder takes the :class:`ReportInputs` and returns a :class:`Section`: the cards of its
Results (the same views Jupyter shows), section-specific parts for the template, the commands
that rerun it, and its build time. Nothing here computes an analysis itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImageError, NetlensError
from .repro import Invocation

if TYPE_CHECKING:
    from ..analyzers.base import Result
    from ..layers import LayerInfo
    from ..lens import Lens

__all__ = ["BUILDERS", "ReportInputs", "Section", "mid_layer"]

DATA_LIMITS = {"stats": 512, "ablate": 512, "evaluate": 32}
EVAL_METRICS = ("pointing", "energy", "deletion", "insertion")  # ROAD is slow; ask for it


@dataclass
class ReportInputs:
    """What the report was asked to show, and how to name it on a command line."""

    lens: Lens
    images: Any = None
    data: Any = None
    methods: list[str] = field(default_factory=lambda: ["gradcam", "gradcam++", "scorecam"])
    limit: int | None = None
    max_images: int = 8
    seed: int = 0
    call: Invocation = field(default_factory=Invocation)
    progress: Any = None  # a netlens.progress.Progress, handed to every analyzer
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    target: str | None = None  # "output:0" once a regression model is met (cam, sanity)
    cam_methods: list[str] | None = None  # the methods the CAM section could run
    _layers: list[LayerInfo] | None = None
    _images: Any = None
    _cut: bool = False  # images were left out (a limit, or unreadable): name the files
    _bad: list[str] = field(default_factory=list)  # unreadable images, not told yet
    _data: Any = None

    def layers(self) -> list[LayerInfo]:
        """The layer table (one dry forward, made once); on the first image when the model
        records no input size (the size every analysis then takes from it)."""
        if self._layers is None:
            from ..layers import layer_table

            try:
                self._layers = self.lens.layers()
            except NetlensError:
                if self.images is None:
                    raise
                first = self.lens.batch(self.images, strict=self.strict).tensor[:1]
                self._layers = layer_table(self.lens.model, first)
        return self._layers

    def data_source(self) -> Any:
        """The data given, else the dataset the model card names; None when neither."""
        return self.data if self.data is not None else self.lens.default_data()

    def need_data(self) -> Any:
        data = self.data_source()
        if data is None:
            raise NetlensError("no data: this model's card names no dataset; give --data")
        return data

    def limit_for(self, section: str) -> int:
        return self.limit if self.limit is not None else DATA_LIMITS[section]

    def report_images(self) -> Any:
        """The images to explain: the given ones, the model's samples, or the data's first;
        at most ``max_images`` readable ones (an unreadable file does not count)."""
        if self._images is None:
            self._images = self._pick_images()
        return self._images

    def _pick_images(self) -> Any:
        n = self.max_images
        if self.images is not None:
            if hasattr(self.images, "dim"):
                return self.images[:n] if self.images.dim() == 4 else self.images
            return self._readable(_flat(self.images), n)
        if self.lens.samples:
            self._cut = len(self.lens.samples) > n
            return self.lens.samples[:n]
        data = self.data_source()
        if data is None:
            raise NetlensError("no images: give IMAGES, or --data to take the first images from")
        from ..data import as_dataset

        ds = as_dataset(data, self.lens.transform, host=self.lens.host)
        files = _files(ds)
        if files is not None:  # a folder or CSV list: its files, named on the command line
            self._cut = True
            return self._readable(files, n)
        import torch

        return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])

    def _readable(self, items: list[Any], n: int) -> list[Any]:
        """The first ``n`` items that can be read; the others are told once (skipped)."""
        from ..images import read_image

        out: list[Any] = []
        for item in items:
            if len(out) == n:
                self._cut = True
                break
            if isinstance(item, (str, Path)):
                try:
                    read_image(item)
                except NetlensError as exc:
                    if self.strict:
                        raise
                    self._bad.append(str(exc))
                    self._cut = True
                    continue
            out.append(item)
        if not out:
            raise NetlensError(self._bad[0] if self._bad else "no images given")
        return out

    def image_words(self) -> list[str]:
        """The explained images on a command line: as given, or each file when only some of
        them (or the data's first) were explained; [] for images held in memory."""
        picked = self.report_images()
        files = isinstance(picked, list) and all(isinstance(p, (str, Path)) for p in picked)
        if files and (self._cut or not self.call.images):
            if self.images is None and self.lens.samples and not self._cut:
                return []  # the model's own samples: the commands' default
            return [str(p) for p in picked]
        return list(self.call.images)

    def untold_bad(self) -> list[str]:
        """Unreadable images not yet shown on the page (each is shown once)."""
        bad, self._bad = self._bad, []
        return bad

    def dataset(self) -> Any:
        """The data as the analyzers see it (labels through the model's label map)."""
        if self._data is None:
            self._data = self.lens.dataset(self.need_data())
        return self._data


def _flat(images: Any) -> list[Any]:
    """A path, folder or list as a flat list of items (a folder's images, sorted)."""
    from ..images import list_images

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    flat: list[Any] = []
    for item in items:
        is_dir = isinstance(item, (str, Path)) and Path(item).is_dir()
        flat += list_images(item) if is_dir else [item]
    return flat


def _files(ds: Any) -> list[Path] | None:
    """The image files of a folder or CSV dataset (never read), else None."""
    while ds is not None:
        items = getattr(ds, "items", None)
        if isinstance(items, list) and items and isinstance(items[0], tuple):
            return [Path(p) for p, _ in items]
        files = getattr(ds, "files", None)
        if isinstance(files, list) and files and isinstance(files[0], (str, Path)):
            return [Path(p) for p in files]
        ds = getattr(ds, "dataset", None)
    return None


def _labels(ds: Any) -> list[int] | None:
    """The class index of every item of ``ds``, read off its list (no image is read); None
    when the dataset does not hold them as a list (or the labels are not one class each)."""
    import numpy as np

    n = len(ds)
    while ds is not None:
        items = getattr(ds, "items", None) or getattr(ds, "samples", None)
        if isinstance(items, list) and len(items) == n and items and isinstance(items[0], tuple):
            return [int(lab) for _, lab in items]
        for attr in ("labels", "targets"):
            value = getattr(ds, attr, None)
            if value is None or callable(value):
                continue
            try:
                arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
            except (TypeError, ValueError):
                continue
            if arr.ndim == 1 and len(arr) == n and arr.dtype.kind in "iu":
                return arr.astype(int).tolist()
        ds = getattr(ds, "dataset", None)
    return None


def data_scope(ctx: ReportInputs, limit: int) -> tuple[str, list[str]]:
    """How much of the data a section used: "the first N of M images (K of C classes)" when
    the limit cuts it, and a note when classes are left out."""
    try:
        ds = ctx.dataset()
        total = len(ds)
    except (NetlensError, TypeError):
        return "", []
    if limit >= total:
        return f"all {total} images", []
    labels = _labels(ds)
    if labels is None:
        return f"the first {limit} of {total} images", []
    used, every = len(set(labels[:limit])), len(set(labels))
    text = f"the first {limit} of {total} images ({used} of {every} classes)"
    if used == every:
        return text, []
    note = (
        f"Only {used} of the data's {every} classes are in its first {limit} images (the "
        f"items are taken in order, and a folder is sorted by class): these numbers do not "
        f"cover the other classes. --limit {total} uses all of them."
    )
    return text, [note]


@dataclass
class Section:
    """One part of the report page."""

    key: str
    title: str
    intro: str = ""
    cards: list[dict[str, Any]] = field(default_factory=list)
    parts: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_inputs: list[str] = field(default_factory=list)  # unreadable images, one line each
    seconds: float = 0.0
    skipped: str = ""


def card(result: Result, table_rows: int = 60) -> dict[str, Any]:
    """Every figure of ``result`` and its table, as the card template takes them."""
    from ..render.display import card_view

    return card_view(result, 1, 1000, table_rows=table_rows)[0]


# -- builders ------------------------------------------------------------------------------------
def model_section(ctx: ReportInputs) -> Section:
    """Model card facts and the layer table."""
    from ..render.display import table_view

    lens, c = ctx.lens, ctx.lens.card
    params = sum(p.numel() for p in lens.model.parameters())
    pre = lens.transform
    test = c.get("test") or {}
    facts = [
        ("model", ctx.call.model or lens.name),
        ("architecture", c.get("arch") or type(lens.model).__name__),
        ("classes", _classes(lens)),
        ("input", f"{pre.channels}×{_size(pre)}, mean {pre.mean}, std {pre.std}"),
        ("parameters", f"{params:,}"),
        ("trained on", c.get("data")),
        ("test accuracy", f"{test['accuracy']:.2%}" if "accuracy" in test else None),
        ("epochs", c.get("epochs")),
        ("trained with", c.get("command")),
        ("training device", c.get("device")),
        ("description", c.get("description")),
    ]
    rows = [
        {"layer": r.name, "type": r.type, "output": _shape(r.output_shape), "params": r.params}
        for r in ctx.layers()
    ]
    return Section(
        "card",
        "Model",
        "What the model is, what it was trained on, and every layer with its output shape.",
        parts={
            "facts": [(k, str(v)) for k, v in facts if v not in (None, "")],
            "layers": table_view(rows, 400, "netlens layers"),
        },
        commands=[ctx.call.command("layers")],
    )


def _classes(lens: Lens) -> str:
    names = lens.classes or []
    return f"{len(names)}: {', '.join(names[:20])}" + (" …" if len(names) > 20 else "")


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(map(str, shape[1:])) if shape else "–"


def cam_section(ctx: ReportInputs) -> Section:
    """Every image explained by each method, side by side; a method that cannot run on this
    model is named with its reason, and the others are shown."""
    from ..render.cam_display import cam_rows, colour_legend

    images = ctx.report_images()
    results, times, ran, notes = [], [], [], []
    failed: list[tuple[str, str]] = []
    for method in ctx.methods:
        t0 = time.perf_counter()
        try:
            res = _cam(ctx, images, method, notes)
        except ImageError:
            raise
        except NetlensError as exc:
            failed.append((method, str(exc)))
            continue
        results.append(res)
        ran.append(method)
        times.append(time.perf_counter() - t0)
    if not results:
        raise NetlensError("; ".join(f"{m}: {why}" for m, why in failed))
    ctx.cam_methods = ran
    shown = f" (shown: {', '.join(ran)})"
    notes += [f"{m} failed on this model: {why.rstrip('.')}{shown}" for m, why in failed]
    for method, res in zip(ran, results, strict=True):
        notes += [f"{method}: {w}" for w in res.meta.get("warnings") or []]
    first = results[0]
    n = len(first.names)
    per_method = [cam_rows(r, list(range(n))) for r in results]
    rows = [
        {**per_method[0][i], "cells": [m[i]["overlays"][0] for m in per_method]} for i in range(n)
    ]
    heads = [f"{m} · {t:.1f} s" for m, t in zip(ran, times, strict=True)]
    side = "1 method" if len(ran) == 1 else f"{len(ran)} methods side by side"
    explained = "output 0" if ctx.target == "output:0" else "the predicted class"
    words = ctx.image_words()
    return Section(
        "cam",
        "Where the model looks",
        f"Class activation maps of {explained} at layer {first.layer}, {side}.",
        parts={"legend": colour_legend(), "methods": heads, "rows": rows},
        commands=[ctx.call.command("cam", *words, method=m, target=ctx.target) for m in ran],
        notes=list(dict.fromkeys(notes)),
        skipped_inputs=list(dict.fromkeys(ctx.untold_bad() + (first.meta.get("skipped") or []))),
    )


REGRESSION_NOTE = (
    "A regression model has no predicted class: the maps explain output 0 (target output:0); "
    "`netlens cam MODEL IMAGES --target output:K` explains output K."
)


def _cam(ctx: ReportInputs, images: Any, method: str, notes: list[str]) -> Result:
    """``lens.cam`` of one method; a regression model's output 0 when it has no prediction."""
    from ..errors import TargetError

    def run() -> Result:
        return ctx.lens.cam(
            images, method=method, target=ctx.target, progress=ctx.progress, strict=ctx.strict
        )

    try:
        return run()
    except TargetError as exc:
        if ctx.target is not None or "regression model" not in str(exc):
            raise
        ctx.target = "output:0"
        notes.append(REGRESSION_NOTE)
        return run()


def _methods(ctx: ReportInputs) -> tuple[list[str], list[str]]:
    """The methods to evaluate and sanity-check: those the CAM section could run (all when it
    did not run), and a note naming the others."""
    if ctx.cam_methods is None:
        return list(ctx.methods), []
    left = [m for m in ctx.methods if m not in ctx.cam_methods]
    note = f"Left out: {', '.join(left)} (failed in the CAM section)." if left else ""
    return list(ctx.cam_methods), [note] if note else []


def kernels_section(ctx: ReportInputs) -> Section:
    """The first layer's filters."""
    res = ctx.lens.kernels(progress=ctx.progress, strict=ctx.strict)
    near = res.meta.get("near_zero") or []
    return Section(
        "kernels",
        "What the first layer learned",
        f"The filters of {res.meta['layer']} ({res.meta['type']}, weight "
        f"{'×'.join(map(str, res.meta['weight_shape']))}); {len(near)} of {res.meta['total']} "
        "are near zero.",
        cards=[card(res)],
        commands=[ctx.call.command("kernels", layer=res.meta["layer"])],
    )


def mid_layer(rows: list[LayerInfo]) -> str | None:
    """The middle convolution (else the middle layer with a spatial N×C×H×W output)."""
    spatial = [
        r
        for r in rows
        if r.output_shape and len(r.output_shape) == 4 and min(r.output_shape[2:]) > 1
    ]
    convs = [r.name for r in spatial if "Conv" in r.type] or [r.name for r in spatial]
    return convs[len(convs) // 2] if convs else None


def features_section(ctx: ReportInputs) -> Section:
    """Feature maps of a middle layer for the first image."""
    layer = mid_layer(ctx.layers())
    if layer is None:
        raise NetlensError("no layer with a spatial output to show feature maps of")
    images = ctx.report_images()  # readable ones only: the first is one the model can see
    first = images[:1] if isinstance(images, list) or hasattr(images, "dim") else images
    res = ctx.lens.features(first, layer=layer, top=16, progress=ctx.progress, strict=ctx.strict)
    return Section(
        "features",
        "What a middle layer responds to",
        f"The 16 most active channels of {layer} for the first image.",
        cards=[card(res, table_rows=0)],
        commands=[ctx.call.command("features", *_first_image(ctx), layer=layer, top=16)],
        skipped_inputs=ctx.untold_bad(),
    )


def _first_image(ctx: ReportInputs) -> list[str]:
    """The first image on a command line: the file explained, else the first sample's."""
    picked = ctx.report_images()
    if isinstance(picked, list) and picked and isinstance(picked[0], (str, Path)):
        return [str(picked[0])]
    if ctx.call.images:
        return ctx.call.images[:1]
    return [str(ctx.lens.samples[0])] if ctx.images is None and ctx.lens.samples else []


def stats_section(ctx: ReportInputs) -> Section:
    """Activation statistics with dead units."""
    data, limit = ctx.need_data(), ctx.limit_for("stats")
    res = ctx.lens.run("stats", data, limit=limit, progress=ctx.progress, strict=ctx.strict)
    dead = [r for r in res.table if (r.get("dead_units") or 0) > 0]
    summary = ", ".join(f"{r['layer']}: {r['dead_units']:.1%}" for r in dead) or "none"
    scope, notes = data_scope(ctx, limit)
    over = scope if scope.startswith("the first") else f"{res.meta.get('samples', limit)} images"
    return Section(
        "stats",
        "Activations and dead units",
        f"Per-layer statistics over {over}; a unit is dead "
        f"when it is never above {res.meta.get('eps', 0)}. Layers with dead units: {summary}.",
        cards=[card(res)],
        commands=[ctx.call.command("stats", data=True, limit=limit)],
        notes=notes,
    )


def ablate_section(ctx: ReportInputs) -> Section:
    """The block ablation table and plot."""
    from ..errors import AnalyzerError

    data, limit = ctx.need_data(), ctx.limit_for("ablate")
    mode, notes = None, []
    try:
        res = ctx.lens.ablate(
            data, limit=limit, seed=ctx.seed, progress=ctx.progress, strict=ctx.strict
        )
    except AnalyzerError as exc:
        if "identity cannot skip any" not in str(exc):
            raise
        mode = "zero"  # every unit changes shape: zeroing its output still removes it
        notes.append(
            "Every unit changes the shape of its input, so none can be skipped (identity): "
            "each unit's output is set to zero instead (mode zero)."
        )
        res = ctx.lens.ablate(
            data, limit=limit, mode=mode, seed=ctx.seed, progress=ctx.progress, strict=ctx.strict
        )
    base = res.baseline
    scope, more = data_scope(ctx, limit)
    on = scope if scope.startswith("the first") else f"{res.baseline.get('n', limit)} images"
    return Section(
        "ablate",
        "Which blocks matter",
        f"Each unit removed in turn ({res.meta['mode']}) on {on}; the intact model's "
        f"{res.meta['metric']} is {base['value']:.4g} (95 % CI {base['ci_low']:.4g}–"
        f"{base['ci_high']:.4g}).",
        cards=[card(res)],
        commands=[ctx.call.command("ablate", data=True, limit=limit, seed=ctx.seed, mode=mode)],
        notes=notes + more,
    )


def evaluate_section(ctx: ReportInputs) -> Section:
    """Explanation-quality metrics with confidence intervals."""
    from ..analyzers.evaluate import plan_cost

    data, limit = ctx.need_data(), ctx.limit_for("evaluate")
    methods, notes = _methods(ctx)
    allowed = plan_cost(ctx.lens, data, methods, None, limit).metrics
    metrics = [m for m in EVAL_METRICS if m in allowed] or allowed
    res = ctx.lens.evaluate(
        data,
        methods=methods,
        metrics=metrics,
        limit=limit,
        progress=ctx.progress,
        strict=ctx.strict,
    )
    scope, more = data_scope(ctx, limit)
    on = scope if scope.startswith("the first") else f"{res.meta.get('images', limit)} images"
    return Section(
        "evaluate",
        "Are the explanations right",
        f"{', '.join(metrics)} for {', '.join(methods)} on {on}, mean with 95 % "
        "CI against a baseline (chance or random order).",
        cards=[card(res)],
        commands=[
            ctx.call.command(
                "evaluate",
                data=True,
                method=",".join(methods),
                metric=",".join(metrics),
                limit=limit,
            )
        ],
        notes=notes + more,
    )


def sanity_section(ctx: ReportInputs) -> Section:
    """Model-randomisation sanity check, a verdict per method."""
    images = ctx.report_images()
    methods, notes = _methods(ctx)
    from ..errors import TargetError

    def run() -> Result:
        return ctx.lens.run(
            "sanity",
            images,
            method=",".join(methods),
            target=ctx.target,
            seed=ctx.seed,
            progress=ctx.progress,
            strict=ctx.strict,
        )

    try:
        res = run()
    except TargetError as exc:  # a regression model has no prediction: its output 0
        if ctx.target is not None or "regression model" not in str(exc):
            raise
        ctx.target = "output:0"
        res = run()
    if ctx.target == "output:0":
        notes.append(REGRESSION_NOTE.replace("netlens cam", "netlens sanity"))
    verdicts = [(m, v["verdict"], bool(v["passes"])) for m, v in res.meta["verdicts"].items()]
    return Section(
        "sanity",
        "Do the maps depend on what the model learned",
        "Cascading randomisation (Adebayo et al., 2018): layers are re-initialised from the top; "
        "maps that stay the same explain the architecture, not the training.",
        cards=[card(res)],
        parts={"verdicts": verdicts},
        commands=[
            ctx.call.command(
                "sanity",
                *ctx.image_words(),
                method=",".join(methods),
                target=ctx.target,
                seed=ctx.seed,
            )
        ],
        notes=notes,
        skipped_inputs=ctx.untold_bad(),
    )


BUILDERS: dict[str, tuple[Callable[[ReportInputs], Section], str]] = {
    "card": (model_section, "Model"),
    "cam": (cam_section, "Where the model looks"),
    "kernels": (kernels_section, "What the first layer learned"),
    "features": (features_section, "What a middle layer responds to"),
    "stats": (stats_section, "Activations and dead units"),
    "ablate": (ablate_section, "Which blocks matter"),
    "evaluate": (evaluate_section, "Are the explanations right"),
    "sanity": (sanity_section, "Do the maps depend on what the model learned"),
}


def _size(pre: Any) -> str:
    """The model's input H×W; a model that records none takes each image's own size."""
    if pre.size is None:
        return "H×W of the first image (the model records no input size)"
    return f"{pre.size[0]}×{pre.size[1]}"
