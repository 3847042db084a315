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
    _check_takes(analyzer, imgs, data)
    inputs = data if data is not None else (imgs or None)
    run_analyzer(analyzer, model, inputs, parse_options(opt), common)


def _check_takes(name: str, images: list[str], data: str | None) -> None:
    """Images for a data analyzer, or --data for an image one: one line, before any model."""
    from ..errors import NetlensError
    from ..plugins.manager import PluginHost

    takes = getattr(PluginHost().analyzers.get(name), "takes", None)  # a plain object: unknown
    if takes == "data" and images:
        raise NetlensError(
            f"{name} takes --data DATA (a dataset name or folder), not images ({images[0]}): "
            f"netlens run {name} [MODEL] --data DATA"
        )
    if takes == "images" and data is not None:
        raise NetlensError(
            f"{name} takes images, not --data ({data}): netlens run {name} [MODEL] IMAGE..."
        )
    if takes == "model" and (images or data is not None):
        raise NetlensError(f"{name} takes no images or data, only the model; drop them")
