"""``netlens cam``: where the model looks, as heatmap overlays, figures, maps and a JSON summary."""

from __future__ import annotations

from typing import Annotated, Any

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
    emit_json,
)

METHOD_HELP = (
    "cam, gradcam, gradcam++ (gradcampp), xgradcam, layercam, hirescam, scorecam, "
    "eigencam, ablationcam, or a plugin's method (see `netlens plugins`)."
)


@cli_errors
def cam(
    model: ModelArg = None,
    images: ImagesArg = None,
    method: Annotated[str, typer.Option("--method", "-m", help=METHOD_HELP)] = "gradcam",
    layer: Annotated[
        str,
        typer.Option(
            "--layer",
            "-l",
            help="auto, a layer name/glob/type:NAME, or several (comma-separated) fused.",
        ),
    ] = "auto",
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Class index or name (default: the "
            "prediction); comma-separated for one per image.",
        ),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", help="One map per class for the K most probable.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Masked passes at once (Score-/Ablation-CAM).")
    ] = 32,
    fuse: Annotated[str, typer.Option("--fuse", help="Several layers: max or mean.")] = "max",
    alpha: Annotated[float, typer.Option("--alpha", help="Heatmap opacity in overlays.")] = 0.5,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    out: OutOpt = DEFAULT_OUT,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Class activation maps: overlay PNGs, side-by-side figures, .npy maps and cam.json."""
    from .common import console, open_lens, split_model_and_images

    model, imgs = split_model_and_images(model, images)
    lens = open_lens(model, arch=arch, num_classes=num_classes, trust=trust, device=device)
    with _progress(quiet or json) as advance:
        result = lens.cam(
            imgs or None,
            method=method,
            layer=layer,
            target=target,
            top=top,
            batch_size=batch_size,
            fuse=fuse,
            progress=advance,
        )
    if result.meta["layer_auto"] and not json:
        console.print(f"layer: [bold]{result.layer}[/bold] (chosen by auto; set --layer to change)")
    files = result.save(out, alpha=alpha)
    summary = result.summary()
    summary["json"] = str(out / "cam.json")
    for err in result.meta["errors"]:
        console.print(f"[yellow]skipped:[/yellow] {err}", soft_wrap=True)
    if json:
        emit_json(summary)
        return
    for row in summary["images"]:
        console.print(_line(row, result.meta.get("top")), soft_wrap=True)
    console.print(f"cam: wrote {len(files)} files to {out}/")


def _line(row: dict[str, Any], top: int | None) -> str:
    names = row["target_name"] if isinstance(row["target_name"], list) else [row["target_name"]]
    probs = row["probability"] if isinstance(row["probability"], list) else [row["probability"]]
    shown = ", ".join(f"{n} ({p:.1%})" for n, p in zip(names, probs, strict=True))
    what = f"top {top}" if top else "target"
    return (
        f"{row['image']}: predicted {row['prediction_name']} "
        f"({row['prediction_probability']:.1%}); {what}: {shown}"
    )


class _progress:
    """A rich progress bar fed by the analyzer's ``progress(done, total)`` callback."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        return None if self.quiet else self.advance

    def advance(self, done: int, total: int) -> None:
        if self.bar is None:
            if total <= 1:
                return
            from rich.progress import Progress

            from .common import console

            self.bar = Progress(console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("cam", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
