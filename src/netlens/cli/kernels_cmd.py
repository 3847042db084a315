"""``netlens kernels [MODEL] [--layer L]``: a layer's weights as a tile grid, with filter stats."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    JsonOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)


@cli_errors
def kernels(
    model: ModelArg = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            help="Conv or linear layer (name, glob, type:NAME); default: the first conv.",
        ),
    ] = None,
    reduce: Annotated[
        str, typer.Option("--reduce", help="Deeper convs: mean, l2 or channel:K over inputs.")
    ] = "mean",
    normalize: Annotated[
        str, typer.Option("--normalize", help="filter (own scale per tile) or joint (one scale).")
    ] = "filter",
    sort: Annotated[
        bool, typer.Option("--sort", help="Order filters by norm, largest first.")
    ] = False,
    max_filters: Annotated[
        int, typer.Option("--max-filters", help="Show at most this many filters.")
    ] = 64,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
) -> None:
    """Kernel grid of a layer (RGB for first layers, matrices for 1×1) + kernels.json/csv."""
    from .common import console, open_lens

    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device="cpu")
    result = lens.kernels(
        layer, reduce=reduce, normalize=normalize, sort=sort, max_filters=max_filters
    )
    files = save_and_report(result, out, json)
    if json:
        return
    meta = result.meta
    console.print(
        f"kernels of {meta['layer']} ({meta['type']}, {meta['total']} filters, "
        f"{len(meta['near_zero'])} near zero): wrote {len(files)} files to {out}/",
        soft_wrap=True,
    )
