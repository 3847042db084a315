"""``netlens ablate [MODEL] --data DIR|NAME``: a layer-ablation study as one command."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    JsonOpt,
    ModelArg,
    OutOpt,
    QuietOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)


@cli_errors
def ablate(
    model: ModelArg = None,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Labelled data: a folder with class "
            "subfolders or a dataset name (e.g. fashion-mnist).",
        ),
    ] = "",
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Units to ablate (names, globs, "
            "type:X); default: every residual block, else each feature-stack child.",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="identity (default; skip the unit), zero, mean or noise (zero for --channels).",
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="accuracy, loss, f1 or top5.")
    ] = "accuracy",
    channels: Annotated[
        bool,
        typer.Option(
            "--channels",
            help="Ablate each channel of the one --layers layer, with cumulative curves.",
        ),
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N images.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 64,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for noise, bootstrap, random order.")
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep rows already in OUT/ablation.csv (same settings) and run only the rest.",
        ),
    ] = False,
    naive: Annotated[
        bool,
        typer.Option(
            "--naive", help="Re-run the whole model per ablation (the slow reference path)."
        ),
    ] = False,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Switch blocks (or channels) off one at a time and measure what each is worth."""
    from .common import console, open_lens

    lens = open_lens(model, arch=arch, trust=trust)
    try:
        result = lens.ablate(
            data or None,
            layers=layers,
            mode=mode,
            metric=metric,
            channels=channels,
            out=out,
            resume=resume,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            fast=not naive,
            quiet=quiet or json,
        )
    except KeyboardInterrupt:
        console.print(
            f"[red]interrupted[/red]: finished rows are in {out}/ablation.csv; "
            "run the same command with --resume to go on"
        )
        raise typer.Exit(130) from None
    files = save_and_report(result, out, json)
    if json:
        return
    console.print(_table(result))
    if result.meta.get("skipped"):
        console.print(
            f"not ablated: {', '.join(result.meta['skipped'])} (identity cannot skip a "
            "layer that changes the shape; use --mode zero or mean for those)"
        )
    console.print(f"ablate: wrote {len(files)} files to {out}/")


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
