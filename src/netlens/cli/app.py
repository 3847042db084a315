"""The root ``netlens`` app: assembles one command per module; nothing heavy at import."""

from __future__ import annotations

from typing import Annotated

import typer

from . import (
    ablate_cmd,
    cam_cmd,
    evaluate_cmd,
    features_cmd,
    kernels_cmd,
    layers_cmd,
    plugins_cmd,
    report_cmd,
    run_cmd,
    sanity_cmd,
    stats_cmd,
    top_cmd,
    train_cmd,
    zoo_cmd,
)

app = typer.Typer(
    name="netlens",
    help="Open up trained PyTorch image models: where they look, what they learned, what matters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)

app.command("ablate")(ablate_cmd.ablate)
app.command("cam")(cam_cmd.cam)
app.command("layers")(layers_cmd.layers)
app.command("plugins")(plugins_cmd.plugins)
app.command("run")(run_cmd.run)
app.command("kernels")(kernels_cmd.kernels)
app.command("features")(features_cmd.features)
app.command("stats")(stats_cmd.stats)
app.command("top")(top_cmd.top)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("sanity")(sanity_cmd.sanity)
app.command("train")(train_cmd.train)
app.command("report")(report_cmd.report)
app.add_typer(zoo_cmd.app, name="zoo")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"netlens {version('netlens')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """netlens: CAMs, kernels, feature maps and layer ablation for PyTorch image models."""


def main() -> None:
    """Console-script entry point."""
    app()
