"""``netlens stats [MODEL] --data DIR|NAME``: activation statistics per layer over a dataset."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import BatchSizeOpt, Common, DataOpt, LayersOpt, LimitOpt, ModelArg, command


@cli_errors
@command()
def stats(
    model: ModelArg = None,
    data: DataOpt = None,
    layers: LayersOpt = None,
    eps: Annotated[
        float, typer.Option("--eps", help="Values ≤ eps count as near zero/dead.")
    ] = 0.0,
    bins: Annotated[int, typer.Option("--bins", help="Histogram bins.", min=1, max=10_000)] = 50,
    hist_range: Annotated[
        str | None,
        typer.Option(
            "--hist-range",
            help="Fixed histogram range LOW,HIGH (default: from the first batch, widened by 10%).",
            show_default=False,
        ),
    ] = None,
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = 32,
    *,
    common: Common,
) -> None:
    """Per-layer mean, std, near-zero and dead-unit fractions, histograms (PNG, JSON, CSV)."""
    from .runner import run_analyzer

    options = {"layers": layers, "eps": eps, "bins": bins, "hist_range": hist_range}
    options |= {"limit": limit, "batch_size": batch_size}
    run_analyzer("stats", model, data, options, common)
