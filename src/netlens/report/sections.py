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

from ..errors import NetlensError
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
    _layers: list[LayerInfo] | None = None

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
        """The images to explain: the given ones, the model's samples, or the data's first."""
        if self.images is not None:
            return _first(self.images, self.max_images)
        if self.lens.samples:
            return self.lens.samples[: self.max_images]
        data = self.data_source()
        if data is None:
            raise NetlensError("no images: give IMAGES, or --data to take the first images from")
        from ..data import as_dataset

        ds = as_dataset(data, self.lens.transform, host=self.lens.host)
        import torch

        return torch.stack([ds[i][0] for i in range(min(self.max_images, len(ds)))])


def _first(images: Any, n: int) -> Any:
    """At most ``n`` images of a path, folder, list or tensor batch."""
    from ..images import list_images

    if hasattr(images, "dim"):
        return images[:n] if images.dim() == 4 else images
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    flat: list[Any] = []
    for item in items:
        is_dir = isinstance(item, (str, Path)) and Path(item).is_dir()
        flat += list_images(item) if is_dir else [item]
    return flat[:n]


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
    """Every image explained by each method, side by side."""
    from ..render.cam_display import cam_rows, colour_legend

    images = ctx.report_images()
    results, times = [], []
    for method in ctx.methods:
        t0 = time.perf_counter()
        results.append(
            ctx.lens.cam(images, method=method, progress=ctx.progress, strict=ctx.strict)
        )
        times.append(time.perf_counter() - t0)
    first = results[0]
    n = len(first.names)
    per_method = [cam_rows(r, list(range(n))) for r in results]
    rows = [
        {**per_method[0][i], "cells": [m[i]["overlays"][0] for m in per_method]} for i in range(n)
    ]
    heads = [f"{m} · {t:.1f} s" for m, t in zip(ctx.methods, times, strict=True)]
    return Section(
        "cam",
        "Where the model looks",
        f"Class activation maps of the predicted class at layer {first.layer}, "
        f"{len(ctx.methods)} methods side by side.",
        parts={"legend": colour_legend(), "methods": heads, "rows": rows},
        commands=[ctx.call.command("cam", images=True, method=m) for m in ctx.methods],
        skipped_inputs=list(first.meta.get("skipped") or []),
    )


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
    images = ctx.report_images()
    first = images[:1] if isinstance(images, list) or hasattr(images, "dim") else images
    res = ctx.lens.features(first, layer=layer, top=16, progress=ctx.progress, strict=ctx.strict)
    return Section(
        "features",
        "What a middle layer responds to",
        f"The 16 most active channels of {layer} for the first image.",
        cards=[card(res, table_rows=0)],
        commands=[ctx.call.command("features", *_first_image(ctx), layer=layer, top=16)],
    )


def _first_image(ctx: ReportInputs) -> list[str]:
    """The first image on a command line: the one given, else the first sample's file."""
    if ctx.call.images:
        return ctx.call.images[:1]
    return [str(ctx.lens.samples[0])] if ctx.images is None and ctx.lens.samples else []


def stats_section(ctx: ReportInputs) -> Section:
    """Activation statistics with dead units."""
    data, limit = ctx.need_data(), ctx.limit_for("stats")
    res = ctx.lens.run("stats", data, limit=limit, progress=ctx.progress, strict=ctx.strict)
    dead = [r for r in res.table if (r.get("dead_units") or 0) > 0]
    summary = ", ".join(f"{r['layer']}: {r['dead_units']:.1%}" for r in dead) or "none"
    return Section(
        "stats",
        "Activations and dead units",
        f"Per-layer statistics over {res.meta.get('samples', limit)} images; a unit is dead "
        f"when it is never above {res.meta.get('eps', 0)}. Layers with dead units: {summary}.",
        cards=[card(res)],
        commands=[ctx.call.command("stats", data=True, limit=limit)],
    )


def ablate_section(ctx: ReportInputs) -> Section:
    """The block ablation table and plot."""
    data, limit = ctx.need_data(), ctx.limit_for("ablate")
    res = ctx.lens.ablate(
        data, limit=limit, seed=ctx.seed, progress=ctx.progress, strict=ctx.strict
    )
    base = res.baseline
    return Section(
        "ablate",
        "Which blocks matter",
        f"Each unit removed in turn ({res.meta['mode']}) on {res.baseline.get('n', limit)} "
        "images; the intact model's "
        f"{res.meta['metric']} is {base['value']:.4g} (95 % CI {base['ci_low']:.4g}–"
        f"{base['ci_high']:.4g}).",
        cards=[card(res)],
        commands=[ctx.call.command("ablate", data=True, limit=limit, seed=ctx.seed)],
    )


def evaluate_section(ctx: ReportInputs) -> Section:
    """Explanation-quality metrics with confidence intervals."""
    from ..analyzers.evaluate import plan_cost

    data, limit = ctx.need_data(), ctx.limit_for("evaluate")
    allowed = plan_cost(ctx.lens, data, ctx.methods, None, limit).metrics
    metrics = [m for m in EVAL_METRICS if m in allowed] or allowed
    res = ctx.lens.evaluate(
        data,
        methods=ctx.methods,
        metrics=metrics,
        limit=limit,
        progress=ctx.progress,
        strict=ctx.strict,
    )
    return Section(
        "evaluate",
        "Are the explanations right",
        f"{', '.join(metrics)} for {', '.join(ctx.methods)} on {res.meta.get('images', limit)} "
        "images, mean with 95 % "
        "CI against a baseline (chance or random order).",
        cards=[card(res)],
        commands=[
            ctx.call.command(
                "evaluate",
                data=True,
                method=",".join(ctx.methods),
                metric=",".join(metrics),
                limit=limit,
            )
        ],
    )


def sanity_section(ctx: ReportInputs) -> Section:
    """Model-randomisation sanity check, a verdict per method."""
    images = ctx.report_images()
    res = ctx.lens.run(
        "sanity",
        images,
        method=",".join(ctx.methods),
        seed=ctx.seed,
        progress=ctx.progress,
        strict=ctx.strict,
    )
    verdicts = [(m, v["verdict"], bool(v["passes"])) for m, v in res.meta["verdicts"].items()]
    return Section(
        "sanity",
        "Do the maps depend on what the model learned",
        "Cascading randomisation (Adebayo et al., 2018): layers are re-initialised from the top; "
        "maps that stay the same explain the architecture, not the training.",
        cards=[card(res)],
        parts={"verdicts": verdicts},
        commands=[
            ctx.call.command("sanity", images=True, method=",".join(ctx.methods), seed=ctx.seed)
        ],
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
