"""``netlens evaluate``: how good are the heatmaps? Pointing game, deletion/insertion, ROAD."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_OUT,
    ArchOpt,
    DeviceOpt,
    JsonOpt,
    ModelArg,
    OutOpt,
    QuietOpt,
    TrustOpt,
    cli_errors,
    save_and_report,
)


@cli_errors
def evaluate(
    model: ModelArg = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Dataset name (shapes, ...) or folder <class>/<image>; masks are "
            "needed for pointing/energy.",
        ),
    ] = None,
    method: Annotated[
        str, typer.Option("--method", "-m", help="CAM method(s), comma-separated.")
    ] = "gradcam",
    masks: Annotated[
        str | None,
        typer.Option(
            "--masks",
            help="Mask PNGs for a --data folder: DIR/<class>/<name>.png (default: "
            "<data>_masks when it exists).",
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Metrics, comma-separated (default: all the data allows): pointing, "
            "energy, deletion, insertion, road-morf, road-lerf.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Images to evaluate.")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="Deletion/insertion steps.")] = 32,
    tolerance: Annotated[
        int, typer.Option("--tolerance", help="Pointing-game tolerance in pixels.")
    ] = 0,
    target: Annotated[
        str,
        typer.Option(
            "--target", help="Explain the true class ('label') or the predicted one ('pred')."
        ),
    ] = "label",
    layer: Annotated[str, typer.Option("--layer", "-l", help="CAM layer.")] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Perturbed images per forward pass.")
    ] = 64,
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt", help="More metric options key=value (fill=blur, noise=0.01, seed=1)."
        ),
    ] = None,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score CAM heatmaps: a table per method (mean ± 95 % CI) with chance / random baselines.

    Prints the number of forward passes before it starts; writes evaluate.csv/.json and
    evaluate-scores.png / evaluate-curves.png to --out.
    """
    from .common import console, open_lens, parse_options

    lens = open_lens(model, arch=arch, trust=trust, device=device)
    result = lens.evaluate(
        data,
        methods=method,
        metrics=metric,
        limit=limit,
        steps=steps,
        tolerance=tolerance,
        target=target,
        layer=layer,
        batch_size=batch_size,
        masks=masks,
        quiet=quiet,
        **parse_options(opt),
    )
    files = save_and_report(result, out, json)
    if json:
        return
    console.print(scores_table(result.table))
    console.print(f"evaluate: wrote {len(files)} files to {out}/")


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
