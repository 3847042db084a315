"""``netlens features``: what a layer responds to, as feature-map grids per image."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import Common, ImagesArg, LayerOpt, ModelArg, TopOpt, command


@cli_errors
@command()
def features(
    model: ModelArg = None,
    images: ImagesArg = None,
    layer: LayerOpt = "auto",
    top: TopOpt = 16,
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels", help="Explicit channels instead, e.g. 0,5,9.", show_default=False
        ),
    ] = None,
    normalize: Annotated[
        str, typer.Option("--normalize", help="channel (own scale per map) or joint.")
    ] = "channel",
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Draw the maps over the image.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Feature-map grids of a layer per image (top channels by mean activation)."""
    from .common import split_model_and_images
    from .runner import run_analyzer

    model, imgs = split_model_and_images(model, images)
    options = {"layer": layer, "top": top, "channels": channels}
    options |= {"normalize": normalize, "overlay": overlay}
    run_analyzer("features", model, imgs or None, options, common)
