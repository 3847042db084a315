"""``netlens sanity``: do the heatmaps depend on the learned weights? (Adebayo et al. 2018)"""

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
    OutOpt,
    QuietOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)


@cli_errors
def sanity(
    model: ModelArg = None,
    images: ImagesArg = None,
    method: Annotated[
        str, typer.Option("--method", "-m", help="CAM method(s), comma-separated.")
    ] = "gradcam",
    layer: Annotated[str, typer.Option("--layer", "-l", help="CAM layer.")] = "auto",
    target: Annotated[
        str | None,
        typer.Option(
            "--target", "-t", help="Class to explain (default: the trained model's prediction)."
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", help="Pass when the fully randomised maps' Spearman is below this."
        ),
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the re-initialisation.")] = 0,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Randomise the model's layers from the top down and watch the heatmaps: a verdict per method.

    Writes the picture strip (sanity-strip-METHOD.png), the similarity curve, sanity.csv/.json.
    The model itself is never changed: a copy is randomised.
    """
    from .common import console, open_lens, split_model_and_images

    model, imgs = split_model_and_images(model, images)
    lens = open_lens(model, arch=arch, trust=trust, device=device)
    result = lens.run(
        "sanity",
        imgs or None,
        method=method,
        layer=layer,
        target=target,
        threshold=threshold,
        seed=seed,
        quiet=quiet,
    )
    files = save_and_report(result, out, json)
    if json:
        return
    for name, v in result.meta["verdicts"].items():
        colour = "green" if v["passes"] else "red"
        console.print(f"[{colour}]{name}[/{colour}]: {v['verdict']}")
    console.print(f"sanity: wrote {len(files)} files to {out}/")
