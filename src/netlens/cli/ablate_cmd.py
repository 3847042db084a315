"""``netlens ablate [MODEL] --data DIR|NAME``: a layer-ablation study as one command.

Finished rows go to ``OUT/ablation.csv`` as they are made (a folder row store), so a study that
is interrupted goes on with ``--resume``; the full result replaces that file at the end.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import cli_errors
from .options import (
    BatchSizeOpt,
    Common,
    DataOpt,
    LayersOpt,
    LimitOpt,
    ModelArg,
    ResumeOpt,
    SeedOpt,
    command,
)

#: The row file's stem; the analyzer's ``ROWS_NAME`` (checked by the tests; no torch import here).
ROWS_NAME = "ablation"
#: The metric names, as the analyzer declares them (checked by the tests).
METRIC_NAMES = ("accuracy", "top5", "loss", "f1", "prob", "kl", "agreement")


@cli_errors
@command()
def ablate(
    model: ModelArg = None,
    data: DataOpt = None,
    layers: LayersOpt = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="identity (default; skip the unit: a residual block keeps its shortcut), zero, "
            "mean or noise (zero for --channels).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="accuracy, top5, loss or f1 (need labels); prob, kl or agreement (compare "
            "with the intact model: no labels needed).",
        ),
    ] = "accuracy",
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels",
            help="Ablate channels of the one --layer layer instead of blocks: all, or a list "
            "such as 0,5,9 (with cumulative curves).",
            show_default=False,
        ),
    ] = None,
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = 64,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    naive: Annotated[
        bool,
        typer.Option(
            "--naive", help="Re-run the whole model per ablation (the slow reference path)."
        ),
    ] = False,
    *,
    common: Common,
) -> None:
    """Switch blocks (or channels) off one at a time and measure what each is worth."""
    from ..storage import FolderStorage
    from .runner import err, run_analyzer

    options = {"layers": layers, "mode": mode, "metric": metric, "channels": channels or False}
    options |= {"limit": limit, "batch_size": batch_size, "seed": seed, "fast": not naive}
    storage = FolderStorage(common.out, resume)
    try:
        run_analyzer("ablate", model, data, options, common, report=_report, storage=storage)
    except KeyboardInterrupt:
        err.print(
            f"[red]interrupted[/red]: finished rows are in {common.out / f'{ROWS_NAME}.csv'}; "
            "run the same command with --resume to go on",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None


def _report(result: Any) -> None:
    from .runner import err, out

    out.print(_table(result))
    if result.meta.get("skipped_units"):
        err.print(
            f"not ablated: {', '.join(result.meta['skipped_units'])} (identity cannot skip a "
            "layer that changes the shape; use --mode zero or mean for those)",
            soft_wrap=True,
        )


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


def _table(result: Any) -> Any:
    from rich.table import Table

    meta, base = result.meta, result.baseline
    harm = meta["harm"]
    what = "blocks" if any(r["kind"] == "residual" for r in result.rows) else "layers"
    what = f"channels of {meta['units'][0]}" if meta["channels"] else what
    title = f"{meta['model']}: ablating {what} ({meta['mode']}; {meta['metric']}, "
    table = Table(title=title + f"{meta['direction']})")
    naive = any(r.get("path") == "naive" for r in result.rows)
    hurt = f"most hurt classes ({meta['per_class']}, before→after)"
    cols = ["unit", meta["metric"], "95% CI", harm, "95% CI", hurt]
    for col in cols + (["path"] if naive else []):
        left = col in (cols[0], cols[-1])
        table.add_column(col, justify="left" if left else "right", overflow="fold")
    table.add_row(
        "intact model",
        _num(base["value"]),
        _interval(base["ci_low"], base["ci_high"]),
        "",
        "",
        "",
        style="bold",
    )
    rows = sorted(result.rows, key=lambda r: -r[harm]) if meta["channels"] else result.rows
    for r in rows[:20]:
        name = f"#{r['channel']}" if r["kind"] == "channel" else r["unit"]
        name += " ↓" if r.get("downsample") else ""
        cells = [name, _num(r["value"]), _interval(r["ci_low"], r["ci_high"])]
        cells += [*_harm_cells(r, harm), _hurt(r)]
        table.add_row(*cells, *([r.get("path") or ""] if naive else []))
    notes = [f"{len(rows) - 20} more rows in {ROWS_NAME}.csv"] if len(rows) > 20 else []
    if any(r.get("downsample") for r in rows):
        notes.append("↓ = block with a projection shortcut")
    table.caption = "; ".join(notes) or None
    return table
