"""``netlens report``: one self-contained HTML page that puts a model on one page."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import cli_errors
from .options import Common, DataOpt, ImagesArg, MethodsOpt, ModelArg, SeedOpt, command

SectionsOpt = Annotated[
    str | None,
    typer.Option(
        "--sections",
        "-s",
        help="Sections, comma-separated: card, cam, kernels, features, stats, ablate, evaluate, "
        "sanity (default: all; without data the data sections are skipped).",
        show_default=False,
    ),
]
ReportLimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        "-n",
        help="Use the first N items of the data in each dataset section (default: 512 for "
        "stats and ablate, 32 for evaluate).",
        min=1,
        show_default=False,
    ),
]
# every option that changes the model or what it sees: the rerun commands repeat them
LOAD_OPTIONS = (
    "arch",
    "arch_kwargs",
    "num_classes",
    "classes",
    "label_map",
    "task",
    "output",
    "trust",
    "device",
    "input_size",
    "crop_pct",
    "mean",
    "std",
    "interpolation",
    "channel_order",
    "max_pixels",
)
MaxImagesOpt = Annotated[
    int, typer.Option("--max-images", help="Explain at most this many images.", min=1)
]


@cli_errors
@command(distributed=False)
def report(
    model: ModelArg = None,
    images: ImagesArg = None,
    data: DataOpt = None,
    sections: SectionsOpt = None,
    method: MethodsOpt = "gradcam,gradcam++,scorecam",
    limit: ReportLimitOpt = None,
    max_images: MaxImagesOpt = 8,
    seed: SeedOpt = 0,
    *,
    common: Common,
) -> None:
    """Put a model on one self-contained HTML page.

    Model card and layers, CAMs of several methods side by side, first-layer kernels, feature
    maps, activation statistics with dead units, block ablation, explanation-quality metrics,
    sanity verdicts, and the command that reruns each part. Writes OUT/report-MODEL.html: one
    file, every image embedded, nothing fetched; it opens offline in any browser.
    """
    from ..output import folder_lock
    from ..report.build import build_report, check_page_path, model_source, page_path
    from ..report.repro import Invocation
    from .common import emit_json, split_model_and_images
    from .runner import err, open_lens, report_skipped, set_threads

    model, imgs = split_model_and_images(model, images)
    _check_sections(sections)
    set_threads(common.threads)
    page = common.out.suffix.lower() == ".html"  # --out page.html: that file
    if page:
        check_page_path(common.out)  # before any work: no page can be written there
    with folder_lock(common.out.parent if page else common.out):
        lens = open_lens(model, common)
        if data is not None:
            _check_data(data, lens)
        flags = {k: getattr(common, k) for k in LOAD_OPTIONS}
        call = Invocation(model or model_source(lens), imgs, data or "", flags)
        check_page_path(page_path(common.out, call.model or lens.name))
        result = build_report(
            lens,
            imgs or None,
            data=data,
            sections=sections,
            methods=method,
            limit=limit,
            max_images=max_images,
            seed=seed,
            invocation=call,
            source_file=model if model and not model.startswith("zoo:") else None,
            progress=not (common.quiet or common.json),
            strict=common.strict,
        ).save(common.out)
    size = result.path.stat().st_size
    if common.json:
        emit_json(_summary(result, size, common))
        report_skipped(result.skipped_inputs, common)
        return
    for key, why in result.skipped.items():
        err.print(f"[yellow]skipped[/yellow] section {key}: {why}", soft_wrap=True)
    err.print(
        f"report: wrote {result.path} ({size / 2**20:.1f} MB, {len(result.sections)} sections, "
        f"{result.seconds:.0f} s)",
        soft_wrap=True,
    )
    report_skipped(result.skipped_inputs, common)


def _check_sections(sections: str | None) -> None:
    """``-s ,`` names no section: refused rather than written as an empty page."""
    from ..errors import NetlensError
    from ..report.sections import BUILDERS

    if sections is not None and not sections.replace(",", "").strip():
        raise NetlensError(
            f"--sections names no section; give some of {', '.join(BUILDERS)} or leave it out"
        )


def _check_data(data: str, lens: Any) -> None:
    """``-d`` must name data even when no chosen section reads it: the page's commands
    repeat it. A folder or dataset name is taken as it is; anything else is opened, which
    fails with one line when it is no data."""
    from pathlib import Path

    from ..data.resolve import as_dataset

    if not (Path(data).is_dir() or data in lens.host.datasets):
        as_dataset(data, host=lens.host, split="test")


def _summary(result: Any, size: int, common: Common) -> dict[str, Any]:
    """What ``--json`` prints: the page, its size and time, each section's time or reason."""
    sections = {
        s.key: {"seconds": round(s.seconds, 2), "skipped": s.skipped or None}
        for s in result.sections
    }
    return {
        "analyzer": "report",
        "path": str(result.path),
        "bytes": size,
        "seconds": round(result.seconds, 2),
        "sections": sections,
        "out": str(common.out),
        "skipped": result.skipped_inputs,
    }
