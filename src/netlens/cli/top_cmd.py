"""``netlens top [MODEL] --data DIR|NAME --layer L``: the inputs that excite each channel most."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    DeviceOpt,
    JsonOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    QuietOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)
from .stats_cmd import DataOpt, LimitOpt


@cli_errors
def top(
    model: ModelArg = None,
    data: DataOpt = "",
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="One layer (default: the last spatial one).")
    ] = "auto",
    channels: Annotated[
        str | None,
        typer.Option("--channels", help="Channels to show, e.g. 0,5,9 (default: the most active)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Top inputs per channel.")] = 8,
    max_channels: Annotated[
        int, typer.Option("--max-channels", help="Channels shown without --channels.")
    ] = 16,
    limit: LimitOpt = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward.")] = 32,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Top-activating inputs per channel, with the patch that drives each peak (PNG, JSON, CSV)."""
    from .common import console, open_lens

    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device=device)
    result = lens.run(
        "top-activations",
        data or None,
        layer=layer,
        channels=channels,
        k=k,
        max_channels=max_channels,
        limit=limit or None,
        batch_size=batch_size,
        quiet=quiet or json,
    )
    files = save_and_report(result, out, json)
    if json:
        return
    console.print(
        f"top {result.meta['k']} of {result.meta['samples']} inputs for "
        f"{len(result.meta['channels'])} channels of {result.meta['layer']}: wrote "
        f"{len(files)} files to {out}/",
        soft_wrap=True,
    )
