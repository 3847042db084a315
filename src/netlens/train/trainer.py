"""The trainer behind ``netlens train`` and ``netlens.train(...)``.

One seeded run: build the architecture, train with AdamW/SGD under a one-cycle or cosine
schedule (bf16 autocast on CUDA, channels-last memory), validate every epoch (accuracy, macro
precision/recall/F1, confusion matrix), keep the best epoch, evaluate it on the test split, and
write a netlens checkpoint whose record says how it was made. ``resume`` continues from the
``<out>.last.pt`` state written after every epoch.
"""

from __future__ import annotations

import json
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ..errors import NetlensError
from ..models.checkpoint import make_checkpoint, write_checkpoint
from ..models.factory import create_arch
from .augment import augment_batch
from .config import TrainConfig
from .datasets import Splits, make_loader, resolve_splits
from .device import device_name, pick_device
from .metrics import evaluate
from .report import epoch_progress, epoch_table, format_row
from .transfer import count_params, freeze, init_from, set_frozen_eval

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = ["TrainResult", "run", "train"]


@dataclass
class TrainResult:
    """What a run produced: the checkpoint path, its record, and the trained model (on CPU)."""

    path: Path
    record: dict[str, Any]
    model: nn.Module

    @property
    def test(self) -> dict[str, Any] | None:
        return self.record.get("test")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def last_path(out: Path) -> Path:
    """Where the resumable state of ``out`` lives (``model.pt`` → ``model.last.pt``)."""
    return out.with_name(out.stem + ".last.pt")


def build_model(cfg: TrainConfig, splits: Splits, host: PluginHost) -> nn.Module:
    kwargs = dict(cfg.arch_kwargs)
    kwargs.pop("num_classes", None)
    if cfg.arch in host.archs:
        kwargs.setdefault("in_chans", splits.preprocess.channels)
        kwargs.setdefault("img_size", splits.preprocess.size[0])
    elif not cfg.arch.startswith("tv:"):
        kwargs.setdefault("in_chans", splits.preprocess.channels)
    return create_arch(cfg.arch, len(splits.classes), host, **kwargs)


def make_optimizer(cfg: TrainConfig, model: nn.Module, steps: int) -> tuple[Any, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise NetlensError("every parameter is frozen; nothing to train (check --freeze)")
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25
        )
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def _train_epoch(ctx: dict[str, Any], epoch: int, progress: Any) -> dict[str, float]:
    cfg, model, dev = ctx["cfg"], ctx["model"], ctx["device"]
    loader, opt, sched, crit = ctx["train_loader"], ctx["opt"], ctx["sched"], ctx["criterion"]
    model.train()
    set_frozen_eval(model, ctx["frozen"])
    total = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)
    task = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=total, loss=float("nan"))
    loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    for b, (x, y) in enumerate(loader):
        if b >= total:
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        x = augment_batch(x, flip=cfg.flip, crop=cfg.crop, generator=ctx["gen"])
        if ctx["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=ctx["autocast"]):
            out = model(x)
        loss = crit(out.float(), y)
        if not torch.isfinite(loss):
            raise NetlensError(f"the loss became {float(loss)} in epoch {epoch}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
        progress.update(task, advance=1, loss=loss_sum / seen)
    progress.remove_task(task)
    secs = time.perf_counter() - start
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": secs,
        "images": seen,
        "images_per_s": seen / secs if secs else 0.0,
    }


def _validate(ctx: dict[str, Any], loader: Any) -> dict[str, Any]:
    model = ctx["model"]
    model.eval()
    return evaluate(
        model,
        loader,
        ctx["num_classes"],
        device=ctx["device"],
        criterion=ctx["criterion"],
        max_batches=ctx["cfg"].max_batches,
        autocast=ctx["autocast"],
        channels_last=ctx["channels_last"],
    )


def _save_last(ctx: dict[str, Any], state: dict[str, Any]) -> None:
    payload = {
        "config": ctx["cfg"].to_dict(),
        "model": ctx["model"].state_dict(),
        "optimizer": ctx["opt"].state_dict(),
        "scheduler": ctx["sched"].state_dict(),
        "rng": {
            "loader": ctx["train_loader"].generator.get_state(),
            "augment": ctx["gen"].get_state(),
            "torch": torch.get_rng_state(),
        },
        **state,
    }
    tmp = ctx["last"].with_name(ctx["last"].name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(ctx["last"])


def _resume(ctx: dict[str, Any]) -> dict[str, Any]:
    path = ctx["last"]
    if not path.is_file():
        raise NetlensError(f"--resume: no saved state at {path}; train without --resume first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("arch", "data", "epochs", "batch_size"):
        if saved["config"][key] != getattr(ctx["cfg"], key):
            raise NetlensError(
                f"--resume: {path} is from a run with {key}={saved['config'][key]!r}, not "
                f"{getattr(ctx['cfg'], key)!r}; resume with the same settings"
            )
    ctx["model"].load_state_dict(saved["model"])
    ctx["opt"].load_state_dict(saved["optimizer"])
    ctx["sched"].load_state_dict(saved["scheduler"])
    ctx["train_loader"].generator.set_state(saved["rng"]["loader"])
    ctx["gen"].set_state(saved["rng"]["augment"])
    torch.set_rng_state(saved["rng"]["torch"])
    return {k: saved[k] for k in ("epoch", "history", "best", "best_state", "elapsed")}


def run(
    cfg: TrainConfig,
    *,
    host: PluginHost | None = None,
    quiet: bool = False,
    command: str | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train per ``cfg`` and write the checkpoint to ``cfg.out``; see the module doc."""
    from ..plugins.manager import PluginHost

    host = host or PluginHost()
    console = console or Console(stderr=True, highlight=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    dev = pick_device(cfg.device)
    splits = resolve_splits(cfg.data, host, seed=cfg.seed)
    model = build_model(cfg, splits, host)
    notes: list[str] = []
    if cfg.init:
        copied, skipped = init_from(model, cfg.init, host)
        notes.append(f"init from {cfg.init}: {copied} tensors copied, {len(skipped)} fresh")
    frozen = freeze(model, cfg.freeze)
    total_params, trainable = count_params(model)
    notes.append(f"parameters: {total_params:,} total, {trainable:,} trainable")
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = conv and dev.type in ("cuda", "cpu")
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    pin = dev.type == "cuda"
    train_loader = make_loader(
        splits.train, cfg.batch_size, shuffle=True, workers=cfg.workers, pin=pin, seed=cfg.seed
    )
    val_loader = make_loader(
        splits.val, cfg.batch_size * 2, shuffle=False, workers=cfg.workers, pin=pin
    )
    per_epoch = (
        len(train_loader) if cfg.max_batches is None else min(len(train_loader), cfg.max_batches)
    )
    opt, sched = make_optimizer(cfg, model, max(1, per_epoch * cfg.epochs))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = {
        "cfg": cfg,
        "model": model,
        "device": dev,
        "opt": opt,
        "sched": sched,
        "train_loader": train_loader,
        "frozen": frozen,
        "num_classes": len(splits.classes),
        "criterion": nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        "autocast": dev.type == "cuda",
        "channels_last": channels_last,
        "last": last_path(out),
        "gen": torch.Generator().manual_seed(cfg.seed + 1),
    }
    state: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        "best": None,
        "best_state": None,
        "elapsed": 0.0,
    }
    if cfg.resume:
        state = _resume(ctx)
        notes.append(f"resumed after epoch {state['epoch']}")
    if not quiet:
        for note in notes:
            console.print(note)
    with epoch_progress(console, quiet) as progress:
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **_train_epoch(ctx, epoch, progress)}
            val = _validate(ctx, val_loader)
            row.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
            row["lr"] = opt.param_groups[0]["lr"]
            state["elapsed"] += time.perf_counter() - t0
            state["history"].append(row)
            if state["best"] is None or val["accuracy"] > state["best"]["accuracy"]:
                state["best"] = {"epoch": epoch, **val}
                state["best_state"] = {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                }
            state["epoch"] = epoch
            _save_last(ctx, state)
            if not quiet:
                console.print(format_row(row))
    model.load_state_dict(state["best_state"])
    test = None
    if splits.test is not None:
        test_loader = make_loader(
            splits.test, cfg.batch_size * 2, shuffle=False, workers=cfg.workers, pin=pin
        )
        test = _validate(ctx, test_loader)
    if not quiet:
        console.print(epoch_table(state["history"], state["best"]["epoch"]))
        if test is not None:
            console.print(
                f"test accuracy {test['accuracy']:.2%}  macro F1 {test['f1']:.3f} "
                f"({test['n']} images)"
            )
    images = sum(r["images"] for r in state["history"])
    train_secs = sum(r["seconds"] for r in state["history"])
    record = {
        "command": command
        or "netlens.train(" + ", ".join(f"{k}={v!r}" for k, v in cfg.to_dict().items() if v) + ")",
        "data": str(cfg.data),
        "epochs": cfg.epochs,
        "config": cfg.to_dict(),
        "history": state["history"],
        "best_epoch": state["best"]["epoch"],
        "val": state["best"],
        "test": test,
        "device": device_name(dev),
        "wall_time_s": round(state["elapsed"], 2),
        "images_per_s": round(images / train_secs, 1) if train_secs else None,
        "params": total_params,
        "trainable_params": trainable,
        "frozen": frozen,
        "torch": str(torch.__version__),
        "python": sys.version.split()[0],
    }
    record = json.loads(json.dumps(record))  # plain JSON types only: weights_only-loadable
    model.to("cpu").to(memory_format=torch.contiguous_format)
    model.eval()
    arch_kwargs = {
        **{k: v for k, v in cfg.arch_kwargs.items() if k != "num_classes"},
        "num_classes": len(splits.classes),
    }
    if cfg.arch in host.archs:
        arch_kwargs.setdefault("in_chans", splits.preprocess.channels)
        arch_kwargs.setdefault("img_size", splits.preprocess.size[0])
    ckpt = make_checkpoint(
        model,
        arch=cfg.arch,
        arch_kwargs=arch_kwargs,
        classes=splits.classes,
        preprocess=splits.preprocess.to_dict(),
        record=record,
    )
    path = write_checkpoint(ckpt, out)
    ctx["last"].unlink(missing_ok=True)  # the run is complete: nothing left to resume
    return TrainResult(path, record, model)


def train(
    arch: str | None = None,
    data: str | None = None,
    *,
    recipe: str | None = None,
    quiet: bool = False,
    host: PluginHost | None = None,
    **options: Any,
) -> TrainResult:
    """Train a model and save it as a netlens checkpoint.

    Args:
        arch: architecture (``lenet5``, ``vgg``, ``resnet``, ``allconv``, a timm name, tv:NAME).
        data: dataset name (``shapes``, ``fashion-mnist``, ``mnist5k``), image folder or CSV list.
        recipe: a zoo recipe name; its settings are the defaults, ``options`` override them.
        quiet: no progress bars or tables.
        **options: any :class:`TrainConfig` field (epochs, batch_size, lr, out, device, ...).

    Example:
        >>> result = netlens.train("lenet5", "mnist5k", epochs=2, out="lenet.pt")
        >>> result.test["accuracy"]
    """
    settings: dict[str, Any] = {}
    if recipe:
        from .recipes import get_recipe

        settings.update(get_recipe(recipe).config)
    settings.update({k: v for k, v in {"arch": arch, "data": data}.items() if v is not None})
    arch_kwargs = {**settings.get("arch_kwargs", {}), **options.pop("arch_kwargs", {})}
    settings.update(options)
    settings["arch_kwargs"] = arch_kwargs
    if "arch" not in settings or "data" not in settings:
        raise NetlensError("say what to train: train(arch=..., data=...) or train(recipe=...)")
    command = settings.pop("command", None)
    cfg = TrainConfig.from_dict(settings)
    return run(cfg, host=host, quiet=quiet, command=command or _argv_command())


def _argv_command() -> str | None:
    """The shell command, when called from the ``netlens`` CLI."""
    if Path(sys.argv[0]).name == "netlens" and len(sys.argv) > 1 and sys.argv[1] == "train":
        return "netlens " + shlex.join(sys.argv[1:])
    return None
