"""``netlens kernels``: what the filters learned, as a tile grid with per-filter statistics."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import Common, ModelArg, command


@cli_errors
@command()
def kernels(
    model: ModelArg = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "--layers",
            "-l",
            help="Conv or linear layer (name, glob, type:NAME); default: the first conv.",
            show_default=False,
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
        int, typer.Option("--max-filters", help="Show at most this many filters.", min=1)
    ] = 64,
    *,
    common: Common,
) -> None:
    """Kernel grid of a layer (RGB for first layers, matrices for 1×1) + kernels.json/csv."""
    from .runner import run_analyzer

    options = {"layer": layer, "reduce": reduce, "normalize": normalize, "sort": sort}
    options["max_filters"] = max_filters
    run_analyzer("kernels", model, None, options, common)
