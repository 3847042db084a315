"""``netlens sanity``: the model-randomisation sanity check, with a verdict per method."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import Common, ImagesArg, LayerOpt, MethodsOpt, ModelArg, SeedOpt, TargetOpt, command


@cli_errors
@command()
def sanity(
    model: ModelArg = None,
    images: ImagesArg = None,
    method: MethodsOpt = "gradcam",
    layer: LayerOpt = "auto",
    target: TargetOpt = None,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", help="Pass when the fully randomised maps' Spearman is below this."
        ),
    ] = 0.5,
    seed: SeedOpt = 0,
    *,
    common: Common,
) -> None:
    """Randomise the model's layers from the top down and watch the heatmaps: a verdict per method.

    Writes the picture strip (sanity-strip-METHOD.png), the similarity curve, sanity.csv/.json.
    The model itself is never changed: a copy is randomised.
    """
    from .common import split_model_and_images
    from .runner import run_analyzer

    model, imgs = split_model_and_images(model, images)
    options = {"method": method, "layer": layer, "target": target, "threshold": threshold}
    options["seed"] = seed
    run_analyzer("sanity", model, imgs or None, options, common)
