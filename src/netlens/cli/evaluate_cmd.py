"""``netlens evaluate``: how good are the heatmaps? Pointing game, deletion/insertion, ROAD."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import (
    BatchSizeOpt,
    Common,
    DataOpt,
    LayerOpt,
    MethodsOpt,
    ModelArg,
    SeedOpt,
    command,
)


@cli_errors
@command()
def evaluate(
    model: ModelArg = None,
    data: DataOpt = None,
    method: MethodsOpt = "gradcam",
    masks: Annotated[
        str | None,
        typer.Option(
            "--masks",
            help="Mask PNGs for a --data folder: DIR/<class>/<name>.png (default: "
            "<data>_masks when it exists).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Metrics, comma-separated (default: all the data allows): pointing, "
            "energy, deletion, insertion, road-morf, road-lerf, randomization.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", help="Images to evaluate (each costs many forward passes).", min=1
        ),
    ] = 64,
    steps: Annotated[
        int, typer.Option("--steps", help="Deletion/insertion steps.", min=1, max=10_000)
    ] = 32,
    tolerance: Annotated[
        int, typer.Option("--tolerance", help="Pointing-game tolerance in pixels.", min=0)
    ] = 0,
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", help="Explain the true class (label) or the predicted one (pred)."
        ),
    ] = "label",
    layer: LayerOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    fill: Annotated[
        str,
        typer.Option("--fill", help="What deleted pixels become: zero (the mean colour) or blur."),
    ] = "zero",
    noise: Annotated[
        float, typer.Option("--noise", help="ROAD imputation noise (std).", min=0.0)
    ] = 0.01,
    seed: SeedOpt = 0,
    *,
    common: Common,
) -> None:
    """Score CAM heatmaps: a table per method (mean ± 95 % CI) with chance / random baselines.

    Prints the number of forward passes before it starts; writes evaluate.csv/.json and
    evaluate-scores.png / evaluate-curves.png to --out.
    """
    from .runner import run_analyzer

    options = {"methods": method, "metrics": metric, "limit": limit, "steps": steps}
    options |= {"tolerance": tolerance, "target": target, "layer": layer, "masks": masks}
    options |= {"batch_size": batch_size, "fill": fill, "noise": noise, "seed": seed}
    run_analyzer("evaluate", model, data, options, common)
