"""Terminal tables of results (rich), printed on stdout by the CLI.

Names (layers, methods, metrics) are never cut: they fold onto a second line if the terminal is
narrow, since they are what a user types next.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "ablation_table",
    "cam_table",
    "sanity_table",
    "scores_table",
    "stats_table",
    "summary_table",
]


def stats_table(result: Any) -> Any:
    """Per layer: mean, std, near-zero and dead fractions."""
    from rich.table import Table

    table = Table(title=f"activation statistics over {result.meta['samples']} samples")
    table.add_column("layer", overflow="fold")
    for col in ("mean", "std", "near zero", "dead units", "dead channels"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in result.table:
        table.add_row(
            r["layer"],
            f"{r['mean']:.3g}",
            f"{r['std']:.3g}",
            f"{r['near_zero']:.1%}",
            f"{r['dead_units']:.1%}",
            f"{r['dead_channels']:.1%}",
        )
    return table


def scores_table(rows: list[dict[str, Any]]) -> Any:
    """Explanation quality: one row per method and metric (↑/↓: which way is better)."""
    from rich.table import Table

    table = Table(title="explanation quality: mean [95% CI] over images")
    for col in ("method", "metric"):
        table.add_column(col, overflow="fold")
    for col in ("score", "baseline", "n"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        arrow = "↑" if r["better"] == "higher" else "↓"
        score = f"{r['mean']:.3f} {_bracketed(r['ci_low'], r['ci_high'])}"
        base = r.get("baseline")
        kind = "chance" if r.get("baseline_kind") == "chance" else "random"
        table.add_row(
            r["method"],
            f"{r['metric']} {arrow}",
            score,
            "" if base is None else f"{base:.3f} {kind}",
            str(r["n"]),
        )
    return table


def evaluate_table(result: Any) -> Any:
    """:func:`scores_table` with what it scored: the images and where their labels came from
    (the explained classes, unless the predicted ones were)."""
    table = scores_table(result.table)
    meta = result.meta
    lines = [f"images: {meta['data_scope']['text']}"] if meta.get("data_scope") else []
    if meta.get("label_source") and meta.get("target", "label") == "label":
        lines.append(f"labels (the classes explained): {meta['label_source']}")
    table.caption = "\n".join(lines) or None
    return table


def cam_table(result: Any) -> Any:
    """Per image: the prediction and what was explained, with probabilities."""
    from rich.table import Table

    table = Table(title=f"{result.meta['method']} on layer {result.layer}")
    for col in ("image", "predicted", "explained"):
        table.add_column(col, overflow="fold")
    for row in result.rows():
        score = "value" if "value" in row else "probability"  # a regression's outputs
        names = row["target_name"] if isinstance(row["target_name"], list) else [row["target_name"]]
        probs = row[score] if isinstance(row[score], list) else [row[score]]
        shown = ", ".join(
            f"{n} ({_score(p, score)})" if p is not None else str(n)
            for n, p in zip(names, probs, strict=True)
        )
        pred = (  # a regression predicts no class: its values are what it says
            "—"
            if row["prediction"] is None
            else f"{row['prediction_name']} ({_score(row[f'prediction_{score}'], score)})"
        )
        table.add_row(row["image"], pred, shown)
    return table


def _score(p: float, kind: str) -> str:
    return f"{p:.1%}" if kind == "probability" else f"= {p:.4g}"


def sanity_table(result: Any) -> Any:
    """One verdict per method, green when the maps depend on the weights."""
    from rich.table import Table

    table = Table(title="model-randomisation sanity check")
    table.add_column("method", no_wrap=True)
    table.add_column("verdict", overflow="fold")
    for name, v in result.meta["verdicts"].items():
        colour = "yellow" if v["passes"] is None else "green" if v["passes"] else "red"
        table.add_row(name, f"[{colour}]{v['verdict']}[/{colour}]")
    return table


def _hurt(row: dict[str, Any]) -> str:
    """``cat 0.90→0.10, dog 1.00→0.50``: the classes whose score falls most."""
    cells = (row.get("hurt_classes") or [])[:2]
    return ", ".join(f"{h['class']} {h['before']:.2f}→{h['after']:.2f}" for h in cells)


def _num(v: float, sign: str = "") -> str:
    """Three decimals, or three significant digits for values too small for them; no -0."""
    v = v + 0.0  # -0.0 → 0.0
    return f"{v:{sign}.3f}" if v == 0 or abs(v) >= 0.01 else f"{v:{sign}.2e}"


def _interval(low: float, high: float) -> str:
    return f"{_num(low)}–{_num(high)}"


def _harm_cells(row: dict[str, Any], harm: str) -> list[str]:
    """The harm and its interval (the delta's, turned the same way)."""
    sign = -1.0 if harm == "drop" else 1.0
    low, high = sorted((sign * row["delta_ci_low"], sign * row["delta_ci_high"]))
    return [_num(row[harm], "+"), _interval(low, high)]


def ablation_table(result: Any) -> Any:
    """The study: the intact model, then each unit's value, harm and most-hurt classes."""
    from rich.table import Table

    meta, base = result.meta, result.baseline
    harm = meta["harm"]
    what = "blocks" if any(r["kind"] == "residual" for r in result.rows) else "layers"
    what = f"channels of {meta['units'][0]}" if meta["channels"] else what
    title = f"{meta['model']}: ablating {what} ({meta['mode']}; {meta['metric']}, "
    table = Table(title=title + f"{meta['direction']})")
    naive = any(r.get("path") == "naive" for r in result.rows)
    by_class = meta.get("per_class") is not None  # absent from results saved by older versions
    what = "labels" if meta.get("task") == "multilabel" else "classes"
    hurt = [f"most hurt {what} ({meta['per_class']}, before→after)"] if by_class else []
    cols = ["unit", meta["metric"], "95% CI", harm, "95% CI", *hurt]
    for col in cols + (["path"] if naive else []):
        left = col in (cols[0], *hurt)
        table.add_column(col, justify="left" if left else "right", overflow="fold")
    table.add_row(
        "intact model",
        _num(base["value"]),
        _interval(base["ci_low"], base["ci_high"]),
        "",
        "",
        *([""] if by_class else []),
        *([""] if naive else []),
        style="bold",
    )
    rows = sorted(result.rows, key=lambda r: -r[harm]) if meta["channels"] else result.rows
    for r in rows[:20]:
        name = f"#{r['channel']}" if r["kind"] == "channel" else r["unit"]
        name += " ↓" if r.get("downsample") else ""
        cells = [name, _num(r["value"]), _interval(r["ci_low"], r["ci_high"])]
        cells += [*_harm_cells(r, harm), *([_hurt(r)] if by_class else [])]
        table.add_row(*cells, *([r.get("path") or ""] if naive else []))
    notes = [f"{len(rows) - 20} more rows in {result.name}.csv"] if len(rows) > 20 else []
    if any(r.get("downsample") for r in rows):
        notes.append("↓ = block with a projection shortcut")
    source = meta.get("label_source")  # where the labels came from (absent: older results)
    lines = [f"labels: {source}"] if source else []
    table.caption = "\n".join([*lines, *(["; ".join(notes)] if notes else [])]) or None
    return table


#: The built-in results' tables, by the result's class (module, class name): a plugin's
#: Result named ``cam`` or ``stats`` is no CamResult and gets the generic summary.
_TABLES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("netlens.analyzers.ablation.result", "AblationResult", ablation_table),
    ("netlens.analyzers.cam_result", "CamResult", cam_table),
    ("netlens.analyzers.stats", "StatsResult", stats_table),
    ("netlens.analyzers.evaluate", "EvaluateResult", evaluate_table),
    ("netlens.analyzers.sanity", "SanityResult", sanity_table),
)


def summary_table(result: Any) -> Any | None:
    """The terminal table for a result of a built-in kind; None: the generic summary.

    A table that cannot be made of the result (one a plugin built from a built-in class with
    other fields) is None too: the result's files are written, and a summary line says it.
    """
    for module, name, make in _TABLES:
        # a class whose module was never imported has no instances: nothing heavy imported
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(result, cls):
            try:
                return make(result)
            except Exception:  # noqa: BLE001 - a summary never fails a written result
                if os.environ.get("NETLENS_DEBUG") == "1":
                    raise
                return None
    return None


def _bracketed(low: float, high: float) -> str:
    """A CI as ``[low, high]``; ``(no CI)`` where there is none (one image; rich would also
    read ``[nan, nan]`` as markup and drop it)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "(no CI)"
    return f"[{low:.2f}, {high:.2f}]"
