"""``netlens cam``: where the model looks, as heatmap overlays, figures, maps and a JSON summary."""

from __future__ import annotations

from typing import Annotated, Any

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
    *,
    common: Common,
) -> None:
    """Class activation maps: overlay PNGs, side-by-side figures, .npy maps and cam.json."""
    from .common import split_model_and_images
    from .runner import run_analyzer

    model, imgs = split_model_and_images(model, images)
    options = {"method": method, "layer": layer, "target": target, "top": top}
    options |= {"batch_size": batch_size, "fuse": fuse}
    run_analyzer("cam", model, imgs or None, options, common, report=_report)


def _report(result: Any) -> None:
    from .runner import err, out

    if result.meta["layer_auto"]:
        err.print(f"layer: [bold]{result.layer}[/bold] (chosen by auto; set --layer to change)")
    for row in result.rows():
        out.print(_line(row, result.meta.get("top")), markup=False)


def _line(row: dict[str, Any], top: int | None) -> str:
    names = row["target_name"] if isinstance(row["target_name"], list) else [row["target_name"]]
    probs = row["probability"] if isinstance(row["probability"], list) else [row["probability"]]
    shown = ", ".join(
        f"{n} ({p:.1%})" if p is not None else str(n) for n, p in zip(names, probs, strict=True)
    )
    what = f"top {top}" if top else "target"
    return (
        f"{row['image']}: predicted {row['prediction_name']} "
        f"({row['prediction_probability']:.1%}); {what}: {shown}"
    )
