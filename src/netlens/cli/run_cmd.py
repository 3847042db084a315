"""``netlens run ANALYZER``: run any registered analyzer (built-in or from a plugin)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    ImagesArg,
    JsonOpt,
    ModelArg,
    OutOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)


@cli_errors
def run(
    analyzer: Annotated[str, typer.Argument(help="Analyzer name (see `netlens plugins`).")],
    model: ModelArg = None,
    images: ImagesArg = None,
    opt: Annotated[
        list[str] | None, typer.Option("--opt", help="Analyzer option key=value (repeatable).")
    ] = None,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
) -> None:
    """Run an analyzer by name and save its PNG/JSON/CSV outputs."""
    from .common import console, open_lens, parse_options, split_model_and_images

    model, imgs = split_model_and_images(model, images)
    lens = open_lens(model, arch=arch, trust=trust)
    result = lens.run(analyzer, imgs or None, **parse_options(opt))
    files = save_and_report(result, out, json)
    if not json:
        console.print(f"{analyzer}: wrote {len(files)} files to {out}/")
