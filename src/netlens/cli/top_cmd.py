"""``netlens top [MODEL] --data D --layer L``: the inputs that excite each channel most."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import BatchSizeOpt, Common, DataOpt, LayerOpt, LimitOpt, ModelArg, TopOpt, command


@cli_errors
@command()
def top(
    model: ModelArg = None,
    data: DataOpt = None,
    layer: LayerOpt = "auto",
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels",
            help="Channels to show, e.g. 0,5,9 (default: the most active).",
            show_default=False,
        ),
    ] = None,
    k: TopOpt = 8,
    max_channels: Annotated[
        int, typer.Option("--max-channels", help="Channels shown without --channels.", min=1)
    ] = 16,
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = 32,
    *,
    common: Common,
) -> None:
    """Top-activating inputs per channel, with the patch that drives each peak (PNG, JSON, CSV)."""
    from .runner import run_analyzer

    options = {"layer": layer, "channels": channels, "k": k, "max_channels": max_channels}
    options |= {"limit": limit, "batch_size": batch_size}
    run_analyzer("top-activations", model, data, options, common)
