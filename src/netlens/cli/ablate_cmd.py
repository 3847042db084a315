"""``netlens ablate [MODEL] --data DIR|NAME``: a layer-ablation study as one command."""

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
            help="identity (default; skip the unit), zero, mean or noise (zero for --channels).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="accuracy, loss, f1 or top5.")
    ] = "accuracy",
    channels: Annotated[
        bool,
        typer.Option(
            "--channels",
            help="Ablate each channel of the one --layer layer, with cumulative curves.",
        ),
    ] = False,
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
    from .runner import err, run_analyzer

    options = {"layers": layers, "mode": mode, "metric": metric, "channels": channels}
    options |= {"limit": limit, "batch_size": batch_size, "seed": seed, "resume": resume}
    options |= {"fast": not naive, "out": common.out, "quiet": common.quiet or common.json}
    try:
        run_analyzer("ablate", model, data, options, common, report=_report)
    except KeyboardInterrupt:
        err.print(
            f"[red]interrupted[/red]: finished rows are in {common.out}/ablation.csv; "
            "run the same command with --resume to go on"
        )
        raise typer.Exit(130) from None


def _report(result: Any) -> None:
    from .runner import err, out

    out.print(_table(result))
    if result.meta.get("skipped_units"):
        err.print(
            f"not ablated: {', '.join(result.meta['skipped_units'])} (identity cannot skip a "
            "layer that changes the shape; use --mode zero or mean for those)"
        )


def _table(result: Any) -> Any:
    from rich.table import Table

    meta, base = result.meta, result.baseline
    kinds = {r["kind"] for r in result.rows}
    what = "blocks" if "residual" in kinds else "layers"
    what = f"channels of {meta['units'][0]}" if meta["channels"] else what
    table = Table(title=f"{meta['model']}: ablating {what} ({meta['mode']}, {meta['metric']})")
    naive = any(r.get("path") == "naive" for r in result.rows)
    cols = ["unit", meta["metric"], "95% CI", "drop", "95% CI", "most-hurt classes"]
    for col in cols + (["path"] if naive else []):
        left = col in ("unit", "most-hurt classes")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != cols[-1])
    ci = f"{base['value_lo']:.2f}–{base['value_hi']:.2f}"
    table.add_row("baseline", f"{base['value']:.3f}", ci, "", "", "", style="bold")
    rows = sorted(result.rows, key=lambda r: -r["drop"]) if meta["channels"] else result.rows
    for r in rows[:20]:
        name = f"#{r['channel']}" if r["kind"] == "channel" else r["unit"]
        name += " ↓" if r.get("downsample") else ""
        hurt = ", ".join(f"{c} -{d:.2f}" for c, d in (r.get("hurt_classes") or [])[:2])
        cells = [
            name,
            f"{r['value']:.3f}",
            f"{r['value_lo']:.2f}–{r['value_hi']:.2f}",
            f"{r['drop']:+.3f}",
            f"{r['drop_lo']:.2f}–{r['drop_hi']:.2f}",
            hurt,
        ]
        table.add_row(*cells, *([r.get("path") or ""] if naive else []))
    notes = [f"{len(rows) - 20} more rows in ablation.csv"] if len(rows) > 20 else []
    if any(r.get("downsample") for r in rows):
        notes.append("↓ = downsampling block")
    table.caption = "; ".join(notes) or None
    return table
