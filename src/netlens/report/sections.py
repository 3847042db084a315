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

from ..errors import AnalyzerError, ImageError, NetlensError
from .inputs import EVAL_METRICS, ReportInputs, data_scope

if TYPE_CHECKING:
    from ..analyzers.base import Result
    from ..layers import LayerInfo
    from ..lens import Lens

__all__ = ["BUILDERS", "ReportInputs", "Section", "mid_layer", "mid_layers"]


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
        ("input", _input_line(pre)),
        ("parameters", f"{params:,}"),
        ("trained on", c.get("data")),
        ("test accuracy", f"{test['accuracy']:.2%}" if test.get("accuracy") is not None else None),
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
    """``3: cat, dog, bird``; a model without names: its output count, ``5 (unnamed: 0–4)``."""
    names = lens.classes or []
    if not names:
        from ..models.classes import output_count

        n = output_count(lens.model, lens.transform, lens.output_key)  # None: cannot tell
        if not n:
            return "unnamed"
        return f"{n} (unnamed: {'0' if n == 1 else f'0–{n - 1}'})"
    shown = ", ".join(isolate(name) for name in names[:20])
    return f"{len(names)}: {shown}" + (" …" if len(names) > 20 else "")


_BIDI = {"R", "AL", "RLE", "RLO", "LRE", "LRO", "RLI", "LRI", "FSI", "PDF", "PDI"}


def isolate(name: str) -> str:
    """``name`` between U+2068 FIRST STRONG ISOLATE and U+2069 POP DIRECTIONAL ISOLATE when it
    holds right-to-left text or bidi controls, so it cannot reorder the text after it (a
    U+202E in a class name would show the next names and numbers reversed)."""
    import unicodedata

    if any(unicodedata.bidirectional(ch) in _BIDI for ch in name):
        return f"\u2068{name}\u2069"
    return name


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
        parts={
            "legend": colour_legend(),
            "values": first.meta.get("task") == "regression",
            "methods": heads,
            "rows": rows,
        },
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
    """The layer whose feature maps the report shows: see :func:`mid_layers`."""
    found = mid_layers(rows)
    return found[0] if found else None


def mid_layers(rows: list[LayerInfo]) -> list[str]:
    """Middle layers to show feature maps of, best first: the middle block of a token model
    whose one convolution is its patch-embedding stem (a ViT's ``blocks.6`` of 12, not the
    stem the kernels section shows), then the middle convolution (else the middle layer with
    a spatial N×C×H×W output)."""
    spatial = [
        r
        for r in rows
        if r.output_shape and len(r.output_shape) == 4 and min(r.output_shape[2:]) > 1
    ]
    convs = [r.name for r in spatial if "Conv" in r.type]
    conv_names = set(convs)
    after = max((i for i, r in enumerate(rows) if r.name in conv_names), default=-1)
    blocks = _blocks(rows[after + 1 :]) if len(convs) <= 1 else []
    picks = convs or [r.name for r in spatial]
    found = [blocks[len(blocks) // 2]] if blocks else []
    return found + ([picks[len(picks) // 2]] if picks else [])


def _blocks(rows: list[LayerInfo]) -> list[str]:
    """The longest run of numbered blocks (``blocks.0``, ``blocks.1``, ...) among ``rows``
    whose outputs keep a token or spatial axis (N×T×C, N×H×W×C); [] when there are not two."""
    import re

    groups: dict[str, list[str]] = {}
    for r in rows:
        m = re.fullmatch(r"(.+)\.\d+", r.name)
        shape = r.output_shape
        if m and shape and len(shape) >= 3 and shape[1] > 1:
            groups.setdefault(m.group(1), []).append(r.name)
    longest = max(groups.values(), key=len, default=[])
    return longest if len(longest) > 1 else []


def features_section(ctx: ReportInputs) -> Section:
    """Feature maps of a middle layer for the first image."""
    layers = mid_layers(ctx.layers())
    if not layers:
        raise NetlensError("no layer with a spatial output to show feature maps of")
    images = ctx.report_images()  # readable ones only: the first is one the model can see
    first = images[:1] if isinstance(images, list) or hasattr(images, "dim") else images
    for n, layer in enumerate(layers):
        try:
            res = ctx.lens.features(
                first, layer=layer, top=16, progress=ctx.progress, strict=ctx.strict
            )
            break
        except AnalyzerError:  # a token block without a patch grid: the convolution
            if n == len(layers) - 1:
                raise
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
    scope, _ = data_scope(ctx, limit)  # classes left out: among the result's own warnings
    on = scope if scope.startswith("the first") else f"{res.meta.get('images', limit)} images"
    more = list(res.meta.get("warnings") or [])  # flat maps, empty masks, the data's scope
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
    verdicts = [(m, v["verdict"], v["passes"]) for m, v in res.meta["verdicts"].items()]
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


def _input_line(pre: Any) -> str:
    """``3×224×224, mean (0.485, 0.456, 0.406), std (...)``: the statistics as applied, one per
    channel (a 1-channel model given ImageNet's three uses the first)."""
    d = pre.to_dict()
    stats = {k: None if d[k] is None else tuple(round(v, 4) for v in d[k]) for k in ("mean", "std")}
    return f"{pre.channels}×{_size(pre)}, mean {stats['mean']}, std {stats['std']}"


def _size(pre: Any) -> str:
    """The model's input H×W; a model that records none takes each image's own size."""
    if pre.size is None:
        return "H×W of the first image (the model records no input size)"
    return f"{pre.size[0]}×{pre.size[1]}"
