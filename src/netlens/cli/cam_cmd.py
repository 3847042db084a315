"""``netlens cam``: where the model looks, as heatmap overlays, figures, maps and a JSON summary."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import (
    BatchSizeOpt,
    Common,
    ImagesArg,
    LayerOpt,
    MethodOpt,
    ModelArg,
    TargetOpt,
    command,
)


@cli_errors
@command()
def cam(
    model: ModelArg = None,
    images: ImagesArg = None,
    method: MethodOpt = "gradcam",
    layer: LayerOpt = "auto",
    target: TargetOpt = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-k",
            help="One map per class for the K most probable (instead of --target).",
            min=1,
            show_default=False,
        ),
    ] = None,
    batch_size: BatchSizeOpt = 32,
    fuse: Annotated[str, typer.Option("--fuse", help="Several layers: max or mean.")] = "max",
    alpha: Annotated[
        float, typer.Option("--alpha", help="Heatmap opacity in the overlays, 0 to 1.")
    ] = 0.5,
    *,
    common: Common,
) -> None:
    """Class activation maps: overlay PNGs, side-by-side figures, .npy maps and cam.json."""
    from .common import split_model_and_images
    from .runner import run_analyzer

    model, imgs = split_model_and_images(model, images)
    options = {"method": method, "layer": layer, "target": target, "top": top}
    options |= {"batch_size": batch_size, "fuse": fuse, "alpha": alpha}
    run_analyzer("cam", model, imgs or None, options, common)
