"""``netlens report``: one self-contained HTML page that puts a model on one page."""

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
    QuietOpt,
    TrustOpt,
    cli_errors,
)

SECTIONS_HELP = (
    "Sections, comma-separated: card, cam, kernels, features, stats, ablate, evaluate, sanity "
    "(default: all; those needing data are skipped when there is none)."
)


@cli_errors
def report(
    model: ModelArg = None,
    images: ImagesArg = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data for stats, ablation and evaluation (default: the card's)."
        ),
    ] = None,
    sections: Annotated[str | None, typer.Option("--sections", "-s", help=SECTIONS_HELP)] = None,
    methods: Annotated[
        str,
        typer.Option("--methods", "-m", help="CAM methods to compare, evaluate and sanity-check."),
    ] = "gradcam,gradcam++,scorecam",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-n", help="Images per dataset analysis (default: 512; evaluate 32)."
        ),
    ] = None,
    max_images: Annotated[
        int, typer.Option("--max-images", help="Explain at most this many images.")
    ] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed for bootstraps and sanity.")] = 0,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Put a model on one self-contained HTML page.

    Model card and layers, CAMs of several methods side by side, first-layer kernels, feature
    maps, activation statistics with dead units, block ablation, explanation-quality metrics,
    sanity verdicts, and the command that reruns each part.

    Writes OUT/report-MODEL.html: one file, every image embedded, opens offline in a browser.
    """
    from ..report.build import build_report, model_source
    from ..report.repro import Invocation
    from .common import console, emit_json, open_lens, split_model_and_images

    model, imgs = split_model_and_images(model, images)
    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device=device)
    call = Invocation(
        model=model or model_source(lens),
        images=imgs,
        data=data or "",
        options={"arch": arch, "num_classes": num_classes, "trust": trust},
    )
    result = build_report(
        lens,
        imgs or None,
        data=data,
        sections=sections,
        methods=methods,
        limit=limit,
        max_images=max_images,
        seed=seed,
        invocation=call,
        source_file=model if model and not model.startswith("zoo:") else None,
        progress=not (quiet or json),
    ).save(out)
    size = result.path.stat().st_size
    if json:
        emit_json(
            {
                "analyzer": "report",
                "path": str(result.path),
                "bytes": size,
                "seconds": round(result.seconds, 2),
                "sections": {
                    s.key: {"seconds": round(s.seconds, 2), "skipped": s.skipped or None}
                    for s in result.sections
                },
                "files": [str(result.path)],
            }
        )
        return
    for key, why in result.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {key}: {why}", soft_wrap=True)
    console.print(
        f"report: wrote {result.path} ({size / 2**20:.1f} MB, {len(result.sections)} sections, "
        f"{result.seconds:.0f} s)",
        soft_wrap=True,
    )
