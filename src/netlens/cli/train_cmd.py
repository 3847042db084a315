"""``netlens train``: train a reference architecture (or any timm model) on a dataset."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import cli_errors, emit_json, parse_options
from .options import Common, command
from .runner import set_max_pixels, set_threads


@cli_errors
@command(model=False)
def train(
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="lenet5, vgg, resnet, allconv, a timm name, tv:NAME, or path/file.py:Class.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Dataset name (shapes, fashion-mnist, mnist5k), image folder or CSV list.",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="Reproduce a zoo model (see `netlens zoo list`); other options override it.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Epochs (default: 10).", min=1, show_default=False),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Batch size (default: 128).", min=1, show_default=False),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Peak learning rate, > 0 and at most 10 (default: 3e-3).",
            show_default=False,
        ),
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="adamw (default) or sgd.", show_default=False)
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule", help="onecycle (default), cosine or constant.", show_default=False
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            "--weight-decay",
            help="Decoupled weight decay (default: 0.05).",
            min=0.0,
            show_default=False,
        ),
    ] = None,
    label_smoothing: Annotated[
        float | None,
        typer.Option(
            "--label-smoothing",
            help="Label smoothing of the training cross-entropy, 0 to under 1 (default: 0.0); "
            "the validation loss is plain cross-entropy.",
            show_default=False,
        ),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option("--flip/--no-flip", help="Random left-right flips.", show_default=False),
    ] = None,
    crop: Annotated[
        int | None,
        typer.Option(
            "--crop",
            help="Random shifts of up to N pixels (padded crops).",
            min=0,
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Random seed (recorded in the outputs).", min=0, show_default=False
        ),
    ] = None,
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            help="Resize images to N×N (default: the dataset's size; 224 for folders).",
            min=1,
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="cpu, cuda, cuda:1 or mps (default: CUDA when present, else CPU).",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from this checkpoint or zoo:NAME (matching weights).",
            show_default=False,
        ),
    ] = None,
    freeze: Annotated[
        str | None,
        typer.Option(
            "--freeze",
            help="'backbone' (train the head only) or 'up-to:LAYER' (LAYER and every layer "
            "that runs before it in the forward pass; the head only when named).",
            show_default=False,
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Allow unpickling a whole model (runs code from the file)."),
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/model.last.pt.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="DataLoader workers for image folders.", min=0, show_default=False
        ),
    ] = None,
    max_batches: Annotated[
        int | None,
        typer.Option(
            "--max-batches",
            help="Stop each epoch after N batches (smoke tests).",
            min=1,
            show_default=False,
        ),
    ] = None,
    arch_opt: Annotated[
        list[str] | None,
        typer.Option(
            "--arch-opt", help="Architecture keyword, key=value (repeatable).", show_default=False
        ),
    ] = None,
    sync_bn: Annotated[
        bool,
        typer.Option(
            "--sync-bn",
            help="Several processes on GPUs: BatchNorm statistics over the global batch.",
        ),
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a model; write OUT/model.pt, a netlens checkpoint (best epoch, training record)."""
    from contextlib import nullcontext

    from ..distributed.setup import join_from_env
    from ..output import folder_lock
    from ..train import train as run_training
    from .runner import said_once

    given = {k: v for k, v in locals().items() if k in _CONFIG_OPTIONS and v is not None}
    options = {**given, "out": str(common.out / "model.pt")}
    options["threads"] = set_threads(common.threads)
    if common.strict:
        options["strict"] = True
    set_max_pixels(common.max_pixels)
    if arch_opt:
        options["arch_kwargs"] = parse_options(arch_opt, "--arch-opt in_chans=1")
    quiet = common.quiet or common.json
    group, _ = join_from_env(device)  # under torchrun: one process of several
    # the folder checked and locked before any data is read (rank 0 writes): a bad --out is
    # one line at once, and a second run into the same folder (train, cam...) stops at once
    lock = folder_lock(common.out) if group.main else nullcontext()
    with said_once(group), lock:
        result = run_training(
            arch, data, recipe=recipe, resume=resume, quiet=quiet, group=group, **options
        )
    if not group.main:  # rank 0 reports
        return
    if common.json:
        emit_json({"checkpoint": str(result.path), **_summary(result.record)})
    else:
        from .runner import err

        err.print(f"train: wrote {result.path}", soft_wrap=True)
    from .runner import report_skipped

    report_skipped(result.skipped, common)  # exit status 3 unless --skip-bad


# the options that are TrainConfig fields, passed on when given
_CONFIG_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "schedule",
    "weight_decay",
    "label_smoothing",
    "flip",
    "crop",
    "seed",
    "img_size",
    "device",
    "init",
    "freeze",
    "workers",
    "max_batches",
    "sync_bn",
    "trust",
)


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    """What ``--json`` prints of the training record."""
    keys = ("data", "epochs", "best_epoch", "test", "device", "wall_time_s", "images_per_s")
    out = {"arch": rec["config"]["arch"], **{k: rec[k] for k in keys}}
    out["val"] = {k: v for k, v in rec["val"].items() if k != "confusion"}
    out |= {"params": rec["params"], "trainable_params": rec["trainable_params"]}
    out["skipped"] = rec.get("skipped") or []
    return out
