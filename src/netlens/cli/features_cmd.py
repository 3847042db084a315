"""``netlens features [MODEL] [IMAGE...] --layer L --top K``: feature maps for images."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    DeviceOpt,
    ImagesArg,
    JsonOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)


@cli_errors
def features(
    model: ModelArg = None,
    images: ImagesArg = None,
    layer: Annotated[
        str,
        typer.Option(
            "--layer",
            "-l",
            help="auto, a layer name/glob/type:NAME, or several comma-separated (one figure each).",
        ),
    ] = "auto",
    top: Annotated[int, typer.Option("--top", "-k", help="Channels with the largest mean.")] = 16,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Explicit channels instead, e.g. 0,5,9.")
    ] = None,
    normalize: Annotated[
        str, typer.Option("--normalize", help="channel (own scale per map) or joint.")
    ] = "channel",
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Draw the maps over the image.")
    ] = False,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
) -> None:
    """Feature-map grids of a layer per image (top channels by mean activation)."""
    from .common import console, open_lens, split_model_and_images

    model, imgs = split_model_and_images(model, images)
    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device=device)
    result = lens.features(
        imgs or None, layer=layer, top=top, channels=channels, normalize=normalize, overlay=overlay
    )
    files = save_and_report(result, out, json)
    if json:
        return
    for err in result.meta["skipped"]:
        console.print(f"[yellow]skipped:[/yellow] {err}")
    console.print(
        f"features of {', '.join(result.meta['layers'])} for "
        f"{len(result.meta['images'])} image(s): wrote {len(files)} files to {out}/",
        soft_wrap=True,
    )
