"""``netlens evaluate``: how good are the heatmaps? Pointing game, deletion/insertion, ROAD."""

from __future__ import annotations

from typing import Annotated, Any

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
    run_analyzer("evaluate", model, data, options, common, report=_report)


def _report(result: Any) -> None:
    from .runner import out

    out.print(scores_table(result.table))


def scores_table(rows: list[dict]):  # noqa: ANN201 - a rich Table, imported lazily
    """The summary as a rich table: one row per method and metric (↑/↓: which way is better)."""
    from rich.table import Table

    table = Table(title="explanation quality: mean [95% CI] over images")
    for col in ("method", "metric", "score", "baseline", "n"):
        table.add_column(col, justify="left" if col in ("method", "metric") else "right")
    for r in rows:
        arrow = "↑" if r["better"] == "higher" else "↓"
        score = f"{r['mean']:.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        base = r.get("baseline")
        kind = "chance" if r.get("baseline_kind") == "chance" else "random"
        table.add_row(
            r["method"],
            f"{r['metric']} {arrow}",
            score,
            "" if base is None else f"{base:.3f} {kind}",
            str(r["n"]),
        )
    return table
