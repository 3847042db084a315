"""``netlens stats [MODEL] --data DIR|NAME``: activation statistics per layer over a dataset."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    DeviceOpt,
    JsonOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    QuietOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)

DataOpt = Annotated[
    str, typer.Option("--data", help="A folder with class subfolders or a dataset name.")
]
LimitOpt = Annotated[int, typer.Option("--limit", help="Use the first N samples (0: all).")]


@cli_errors
def stats(
    model: ModelArg = None,
    data: DataOpt = "",
    layers: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "--layers",
            "-l",
            help="Layers (names, globs, type:NAME); default: the activation modules.",
        ),
    ] = None,
    eps: Annotated[
        float, typer.Option("--eps", help="Values ≤ eps count as near zero/dead.")
    ] = 0.0,
    bins: Annotated[int, typer.Option("--bins", help="Histogram bins.")] = 50,
    hist_range: Annotated[
        str | None,
        typer.Option(
            "--hist-range",
            help="Fixed histogram range LOW,HIGH (default: from the first batch, widened by 10%).",
        ),
    ] = None,
    limit: LimitOpt = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward.")] = 32,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-layer mean, std, near-zero and dead-unit fractions, histograms (PNG, JSON, CSV)."""
    from .common import console, open_lens

    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device=device)
    result = lens.run(
        "stats",
        data or None,
        layers=layers,
        eps=eps,
        bins=bins,
        hist_range=hist_range,
        limit=limit or None,
        batch_size=batch_size,
        quiet=quiet or json,
    )
    files = save_and_report(result, out, json)
    if json:
        return
    worst = max(result.table, key=lambda r: r["dead_units"])
    console.print(
        f"stats of {len(result.table)} layers over {result.meta['samples']} samples; "
        f"most dead units: {worst['layer']} ({worst['dead_units']:.1%}); "
        f"wrote {len(files)} files to {out}/",
        soft_wrap=True,
    )
