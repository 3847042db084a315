"""``netlens run ANALYZER``: run any registered analyzer (built-in or from a plugin) by name."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli_errors
from .options import Common, ImagesArg, ModelArg, command


@cli_errors
@command()
def run(
    analyzer: Annotated[str, typer.Argument(help="Analyzer name (see `netlens plugins`).")],
    model: ModelArg = None,
    images: ImagesArg = None,
    opt: Annotated[
        list[str] | None,
        typer.Option("--opt", help="Analyzer option key=value (repeatable).", show_default=False),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data, for analyzers that take a dataset.", show_default=False
        ),
    ] = None,
    *,
    common: Common,
) -> None:
    """Run an analyzer by name and save its PNG/JSON/CSV outputs."""
    from .common import parse_options, split_model_and_images
    from .runner import run_analyzer

    model, imgs = split_model_and_images(model, images)
    if data is not None and imgs:
        from ..errors import NetlensError

        raise NetlensError(
            f"images ({', '.join(imgs[:2])}{', ...' if len(imgs) > 2 else ''}) and --data "
            f"{data} both given; give one: the images to explain, or --data"
        )
    inputs = data if data is not None else (imgs or None)
    run_analyzer(analyzer, model, inputs, parse_options(opt), common)
