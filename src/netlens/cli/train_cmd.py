"""``netlens train``: train a reference architecture (or any timm model) on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DeviceOpt, JsonOpt, QuietOpt, cli_errors, emit_json, parse_options


@cli_errors
def train(
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="lenet5, vgg, resnet, allconv, a timm name or tv:NAME."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Dataset name (shapes, fashion-mnist, mnist5k), image folder or CSV list.",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="Reproduce a zoo model (see `netlens zoo list`); other options override it.",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs [default: 10].")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Batch size [default: 128].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Peak learning rate [default: 3e-3].")
    ] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw or sgd.")] = None,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="onecycle, cosine or constant.")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing")] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="Random left-right flips.")
    ] = None,
    crop: Annotated[
        int | None, typer.Option("--crop", help="Random shifts of up to N pixels (padded crops).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            help="Resize images to N×N (default: the dataset's size; 224 for folders).",
        ),
    ] = None,
    device: DeviceOpt = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="Start from this checkpoint or zoo:NAME (matching weights)."),
    ] = None,
    freeze: Annotated[
        str | None,
        typer.Option("--freeze", help="'backbone' (train the head only) or 'up-to:LAYER'."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <out>.last.pt.")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", help="DataLoader workers for image folders.")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")] = None,
    max_batches: Annotated[
        int | None,
        typer.Option("--max-batches", help="Stop each epoch after N batches (smoke tests)."),
    ] = None,
    arch_opt: Annotated[
        list[str] | None,
        typer.Option("--arch-opt", help="Architecture keyword, key=value (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Checkpoint to write [default: model.pt].")
    ] = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model and write a netlens checkpoint (best epoch, with its training record)."""
    from ..train import train as run_training

    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "schedule": schedule,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "flip": flip,
        "crop": crop,
        "seed": seed,
        "img_size": img_size,
        "device": device,
        "init": init,
        "freeze": freeze,
        "workers": workers,
        "threads": threads,
        "max_batches": max_batches,
        "out": str(out) if out is not None else None,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if arch_opt:
        options["arch_kwargs"] = parse_options(arch_opt)
    result = run_training(arch, data, recipe=recipe, resume=resume, quiet=quiet or json, **options)
    if json:
        rec = result.record
        emit_json(
            {
                "checkpoint": str(result.path),
                "arch": rec["config"]["arch"],
                "data": rec["data"],
                "epochs": rec["epochs"],
                "best_epoch": rec["best_epoch"],
                "val": {k: v for k, v in rec["val"].items() if k != "confusion"},
                "test": rec["test"],
                "device": rec["device"],
                "wall_time_s": rec["wall_time_s"],
                "images_per_s": rec["images_per_s"],
                "params": rec["params"],
                "trainable_params": rec["trainable_params"],
            }
        )
    elif not quiet:
        from .common import console

        console.print(f"wrote {result.path}")
