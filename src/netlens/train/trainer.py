"""The trainer behind ``netlens train`` and ``netlens.train(...)``.

One seeded run: build the architecture, train with AdamW/SGD under a one-cycle or cosine
schedule (bf16 autocast on CUDA, channels-last memory), validate every epoch (accuracy, macro
precision/recall/F1, confusion matrix), keep the best epoch, evaluate it on the test split, and
write a netlens checkpoint whose record says how it was made. ``resume`` continues from the
``<out>.last.pt`` state written after every epoch.

Under torchrun the same run is spread over the processes (:mod:`.ddp`): DistributedDataParallel
on the global batches one process would draw, validation sharded exactly, and rank 0 alone
printing and writing checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from ..distributed import Group
from ..distributed.setup import join_from_env, rank_device
from ..errors import DataError, NetlensError
from ..images import Preprocess
from ..layout import takes_channels_last
from ..models.checkpoint import make_checkpoint, write_checkpoint
from ..models.factory import check_arch
from .augment import augment_batch, check_crop
from .build import arch_kwargs, first_two, model_to_train
from .config import TrainConfig
from .datasets import Splits, check_classes, make_loader, resolve_splits, set_epoch
from .ddp import rank_loader, replicate, shared_loader
from .device import pick_device
from .evaluation import evaluate, logits
from .heldout import data_record, file_lists
from .optim import make_optimizer
from .report import confusion_table, epoch_progress, epoch_table, format_row
from .resume import last_path, load_state, save_state
from .run_record import make_record, test_cut
from .transfer import (
    set_frozen_eval,
)

if TYPE_CHECKING:
    from ..plugins.manager import PluginHost

__all__ = ["Session", "TrainResult", "run", "setup", "train"]


@dataclass
class TrainResult:
    """What a run produced: the checkpoint path, its record, and the trained model (on CPU)."""

    path: Path
    record: dict[str, Any]
    model: nn.Module

    @property
    def test(self) -> dict[str, Any] | None:
        return self.record.get("test")

    @property
    def skipped(self) -> list[str]:
        """The images that could not be read and were left out, one line each."""
        return list(self.record.get("skipped") or [])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Session:
    """Everything one run works with (built by :func:`setup`)."""

    cfg: TrainConfig
    host: PluginHost
    splits: Splits
    model: nn.Module
    device: torch.device
    train_loader: DataLoader
    val_loader: DataLoader
    opt: torch.optim.Optimizer
    sched: Any
    frozen: list[str]
    params: tuple[int, int]
    notes: list[str]
    channels_last: bool
    group: Group
    net: nn.Module  # what training calls: the DDP replica (the model itself in one process)
    criterion: nn.Module = field(init=False)
    val_criterion: nn.Module = field(init=False)  # plain cross-entropy, label smoothing or not
    gen: torch.Generator = field(init=False)  # augmentation draws, seeded apart from the data
    out: Path = field(init=False)
    skipped: dict[str, None] = field(init=False)  # unreadable images met, in order
    single_steps: int = field(init=False)  # steps left out: one readable image for BatchNorm
    blank: torch.Tensor = field(init=False)  # an empty batch, for a rank with no readable row
    data_info: dict[str, Any] = field(init=False)  # the data and its held-out images, recorded
    files: dict[str, Any] | None = field(init=False)  # train/val file lists, for --resume

    def __post_init__(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        self.val_criterion = nn.CrossEntropyLoss()
        self.skipped = {}
        self.single_steps = 0
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.out = Path(self.cfg.out)
        self.data_info = data_record(self.cfg.data, self.splits)
        self.files = file_lists(self.splits, self.cfg.data)

    @property
    def autocast(self) -> bool:
        return self.device.type == "cuda"

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)


def setup(
    cfg: TrainConfig, host: PluginHost, group: Group | None = None, device: str | None = None
) -> Session:
    """Seed, pick the device, resolve the data, build model, loaders and optimizer.

    ``group``/``device``: this process's place in a distributed run (:func:`join_from_env`).
    """
    check_arch(cfg.arch, host)  # an unknown name fails before any data is made or read
    if _is_folder(str(cfg.out)):  # a folder: its model.pt, as the CLI's --out
        cfg = replace(cfg, out=str(Path(cfg.out) / "model.pt"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    group = group or Group()
    seed_everything(cfg.seed)
    dev = pick_device(device if group.world > 1 else cfg.device)
    pre = Preprocess(size=(cfg.img_size, cfg.img_size)) if cfg.img_size else None
    gray = cfg.arch_kwargs.get("in_chans") == 1  # a 1-channel model: grayscale images
    splits = resolve_splits(
        cfg.data, host, preprocess=pre, seed=cfg.seed, channels=1 if gray else None
    )
    check_classes(splits, cfg.data)
    sample = first_two(splits)
    if cfg.crop and sample.dim() == 4:  # refused before the model is built and described
        check_crop(cfg.crop, *sample.shape[-2:])
    cfg, model, frozen, params, notes, sample = model_to_train(cfg, splits, host, sample)
    notes[:0] = splits.notes
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    # channels-last only for a model that runs on it (a hand-written .view() does not)
    channels_last = conv and dev.type in ("cuda", "cpu") and takes_channels_last(model, sample)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, val_loader = _loaders(cfg, splits, group, dev, _trains_batchnorm(model, cfg))
    per_epoch = min(len(train_loader), cfg.max_batches or len(train_loader))
    opt, sched = make_optimizer(cfg, model, max(1, per_epoch * cfg.epochs))
    net = replicate(model, group, dev, cfg.sync_bn)
    if group.world > 1:
        notes.append(f"{group.world} processes (DDP), global batch {cfg.batch_size}")
    session = Session(  # the output folder is made by the first write: a refused run leaves none
        cfg,
        host,
        splits,
        model,
        dev,
        train_loader,
        val_loader,
        opt,
        sched,
        frozen,
        params,
        notes,
        channels_last,
        group,
        net,
    )
    session.blank = sample[:0]
    return session


def _is_folder(out: str) -> bool:
    """Whether ``out`` names a folder: one that exists, a trailing separator (``runs/exp1/``)
    or a name with no suffix that is no file (``runs/exp1``), as the CLI's ``--out``."""
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        return True
    return not path.suffix and not path.is_file()


def _trains_batchnorm(model: nn.Module, cfg: TrainConfig) -> bool:
    """True when BatchNorm layers train on each process's part of the batch (not --sync-bn,
    not frozen)."""
    if cfg.sync_bn:
        return False
    bn = nn.modules.batchnorm._BatchNorm
    return any(
        isinstance(m, bn) and all(p.requires_grad for p in m.parameters()) for m in model.modules()
    )


def _loaders(
    cfg: TrainConfig, splits: Splits, group: Group, dev: torch.device, batchnorm: bool = False
) -> tuple[DataLoader, DataLoader]:
    """The training loader (this process's share of each global batch) and the validation one."""
    pin = dev.type == "cuda"
    train = make_loader(
        splits.train,
        cfg.batch_size,
        shuffle=True,
        workers=cfg.workers,
        pin=pin,
        seed=cfg.seed,
        drop_single=True,  # BatchNorm cannot train on a last batch of one image
    )
    val = make_loader(splits.val, cfg.batch_size * 2, shuffle=False, workers=cfg.workers, pin=pin)
    return rank_loader(train, group, batchnorm), val


def _train_epoch(s: Session, epoch: int, progress: Any) -> dict[str, float]:
    cfg, model = s.cfg, s.model
    s.net.train()
    set_frozen_eval(model, s.frozen)
    total = min(len(s.train_loader), cfg.max_batches or len(s.train_loader))
    set_epoch(s.train_loader, epoch)  # the order of (seed, epoch): the same after a resume
    task = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=total, loss=float("nan"))
    loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    bn = nn.modules.batchnorm._BatchNorm
    batchnorm = any(isinstance(m, bn) and m.training for m in model.modules())
    for b, (x, y, bad) in enumerate(s.train_loader):
        if b >= total:
            break
        note_skipped(s, bad)
        # the global batch is its readable images, on every rank (one process: this one's)
        counts = _readable_counts(s, 0 if x is None else len(y))
        n_global, first = sum(counts), sum(counts[: s.group.rank])
        if not n_global:  # no image of the global batch could be read: no step anywhere
            progress.update(task, advance=1)
            continue
        if batchnorm and 1 in counts and (s.group.world > 1 or bad):
            # the batch's other images were unreadable: BatchNorm cannot train on one image
            s.single_steps += 1
            progress.update(task, advance=1)
            continue
        if x is None:  # this rank's part was unreadable: a zero loss, joining the others
            x, y = s.blank, torch.zeros(0, dtype=torch.long)
        loss, hits = _step(s, epoch, n_global, x, y, first)
        loss_sum += loss * len(y)
        correct += hits
        seen += len(y)
        progress.update(task, advance=1, loss=loss_sum / seen if seen else float("nan"))
    progress.remove_task(task)
    secs = time.perf_counter() - start
    parts = s.group.gather((loss_sum, correct, seen))
    loss_sum, correct, seen = (sum(p[i] for p in parts) for i in range(3))
    if not seen and s.single_steps:
        raise DataError(
            "no training batch had two readable images, which BatchNorm needs "
            f"({next(iter(s.skipped))}); remove the unreadable images or raise --batch-size"
        )
    if not seen and s.skipped:
        raise DataError(f"none of the training images could be read ({next(iter(s.skipped))})")
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": secs,
        "images": seen,
        "images_per_s": seen / secs if secs else 0.0,
    }


def _readable_counts(s: Session, readable: int) -> list[int]:
    """Each rank's count of readable images in this global batch (exchanged between ranks)."""
    if s.group.world == 1:
        return [readable]
    return [int(c) for c in s.group.gather(readable)]


def _step(
    s: Session, epoch: int, n_global: int, x: torch.Tensor, y: torch.Tensor, start: int = 0
) -> tuple[float, int]:
    """One optimiser step on this rank's rows of a global batch of ``n_global`` readable
    images, the first of them row ``start`` of it: (mean loss, correct count)."""
    cfg = s.cfg
    x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
    x = augment_batch(x, flip=cfg.flip, crop=cfg.crop, generator=s.gen, rows=(start, n_global))
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
        out = logits(s.net(x))
    # no row here (its images were unreadable): a zero loss, so DDP's all-reduce still runs
    loss = s.criterion(out.float(), y) if len(y) else out.float().sum() * 0.0
    if not torch.isfinite(loss):
        raise NetlensError(f"the loss became {float(loss)} in epoch {epoch}; lower --lr")
    s.opt.zero_grad(set_to_none=True)
    # weighted by this rank's share, so DDP's average is the global batch's mean
    (loss * (len(y) * s.group.world / n_global)).backward()
    s.opt.step()
    s.sched.step()
    return float(loss.detach()), int((out.argmax(1) == y).sum())


def _validate(s: Session, loader: DataLoader) -> dict[str, Any]:
    s.model.eval()
    return evaluate(
        s.model,
        shared_loader(loader, s.group, s.cfg.max_batches),
        s.num_classes,
        device=s.device,
        criterion=s.val_criterion,  # plain cross-entropy: comparable across --label-smoothing
        max_batches=s.cfg.max_batches if s.group.world == 1 else None,
        autocast=s.autocast,
        channels_last=s.channels_last,
        group=s.group,
        on_skipped=lambda lines: note_skipped(s, lines),
    )


def note_skipped(s: Session, lines: list[str]) -> None:
    """Record unreadable images (skipped); with ``strict``, stop at the first."""
    if lines and s.cfg.strict:
        raise DataError(f"{lines[0]} (--strict stops at the first unreadable image)")
    s.skipped.update(dict.fromkeys(lines))


def _write(s: Session, state_dict: dict[str, torch.Tensor], record: dict[str, Any]) -> Path:
    """Write the best weights so far as a netlens checkpoint (atomically)."""
    cpu = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format)
        if v.dim() == 4
        else v.detach().cpu()
        for k, v in state_dict.items()
    }
    ckpt = make_checkpoint(
        nn.Module(),
        arch=s.cfg.arch,
        arch_kwargs=arch_kwargs(s.cfg, s.splits, s.host),
        classes=s.splits.classes,
        preprocess=s.splits.preprocess.to_dict(),
        record=record,
    )
    ckpt["state_dict"] = {k: v.contiguous().clone() for k, v in cpu.items()}
    return write_checkpoint(ckpt, s.out)


def _fit(
    s: Session, state: dict[str, Any], console: Console, quiet: bool, command: str | None
) -> None:
    with epoch_progress(console, quiet) as progress:
        for epoch in range(state["epoch"] + 1, s.cfg.epochs + 1):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **_train_epoch(s, epoch, progress)}
            val = _validate(s, s.val_loader)
            if not val["n"]:  # no readable validation image: no scores (not 0)
                val.update(dict.fromkeys(("accuracy", "precision", "recall", "f1", "loss")))
            elif not math.isfinite(val["loss"]):  # diverged: keep no checkpoint of this epoch
                raise NetlensError(
                    f"the validation loss became {val['loss']} in epoch {epoch}; lower --lr"
                )
            row.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
            row["lr"] = s.opt.param_groups[0]["lr"]
            state["elapsed"] += time.perf_counter() - t0
            state["history"].append(row)
            state["epoch"] = epoch
            # no readable validation image: the last epoch is kept
            unscored = state["best"] is None or None in (val["accuracy"], state["best"]["accuracy"])
            if unscored or val["accuracy"] > state["best"]["accuracy"]:
                state["best"] = {"epoch": epoch, **val}
                state["best_state"] = {
                    k: v.detach().cpu().clone() for k, v in s.model.state_dict().items()
                }
                if s.group.main:
                    _write(s, state["best_state"], make_record(s, state, None, command, False))
            if s.group.main:
                save_state(s, state)
            if not quiet:
                console.print(format_row(row))


def run(
    cfg: TrainConfig,
    *,
    host: PluginHost | None = None,
    quiet: bool = False,
    command: str | None = None,
    console: Console | None = None,
    group: Group | None = None,
) -> TrainResult:
    """Train per ``cfg`` and write the best epoch's checkpoint to ``cfg.out`` (module doc).

    ``group``: this process's place in a distributed run, when the caller has joined it already
    (default: :func:`join_from_env`).
    """
    from ..plugins.manager import PluginHost

    console = console or Console(stderr=True, highlight=False)
    if group is None:
        group, device = join_from_env(cfg.device)  # one process outside torchrun
    else:  # the caller's (the CLI's): one Group per process, so a failure is said once
        device = rank_device(cfg.device, group.local_rank) if group.world > 1 else cfg.device
    with group.guard():  # a failing rank stops the others at their next exchange
        s = setup(cfg, host or PluginHost(), group, device)
        return _run(s, cfg, quiet=quiet or not group.main, command=command, console=console)


def _run(
    s: Session, cfg: TrainConfig, *, quiet: bool, command: str | None, console: Console
) -> TrainResult:
    state: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        "best": None,
        "best_state": None,
        "elapsed": 0.0,
    }
    if cfg.resume:
        state = load_state(s)
    if not quiet:
        for note in s.notes:
            console.print(note)
    _fit(s, state, console, quiet, command)
    s.model.load_state_dict(state["best_state"])
    test = None
    if s.splits.test is not None:
        loader = make_loader(
            s.splits.test,
            cfg.batch_size * 2,
            shuffle=False,
            workers=cfg.workers,
            pin=s.device.type == "cuda",
        )
        test = _validate(s, loader)
        if cfg.max_batches and len(loader) > cfg.max_batches:  # a smoke test: say so
            test["cut_by_max_batches"] = cfg.max_batches
            test["images_total"] = len(s.splits.test)  # type: ignore[arg-type]
        if not test["n"]:  # no readable test image: no scores (not 0), as for validation
            test.update(dict.fromkeys(("accuracy", "precision", "recall", "f1", "loss")))
    s.skipped = dict.fromkeys(s.group.union(s.skipped))  # every rank's
    if not quiet:
        console.print(epoch_table(state["history"], state["best"]["epoch"]))
        if not state["best"]["n"]:
            console.print("no validation image could be read: kept the last epoch")
        if test is not None and not test["n"]:
            console.print("no test image could be read: no test scores")
        elif test is not None:
            console.print(confusion_table(test["confusion"], s.splits.classes))
            console.print(
                f"test accuracy {test['accuracy']:.2%}  macro F1 {test['f1']:.3f} "
                f"({test['n']} images)"
            )
        if test_cut(test):
            console.print(
                f"--max-batches {cfg.max_batches}: the test split was scored on {test['n']} of "
                f"its {test['images_total']} images (record['complete'] is False)"
            )
        if s.skipped:
            console.print(f"{len(s.skipped)} unreadable image(s) skipped (record['skipped'])")
        if s.single_steps:
            console.print(
                f"{s.single_steps} training step(s) left out: one readable image in the batch, "
                "which BatchNorm cannot train on (record['single_image_steps'])"
            )
    record = make_record(s, state, test, command)
    path = _write(s, state["best_state"], record) if s.group.main else s.out
    s.group.gather(None)  # every rank waits for rank 0's checkpoint before it returns
    if s.group.main:
        last_path(s.out).unlink(missing_ok=True)  # the run is complete: nothing to resume
    s.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return TrainResult(path, record, s.model)


def train(
    arch: str | None = None,
    data: str | None = None,
    *,
    recipe: str | None = None,
    quiet: bool = False,
    host: PluginHost | None = None,
    group: Group | None = None,
    **options: Any,
) -> TrainResult:
    """Train a model and save it as a netlens checkpoint.

    Args:
        arch: architecture (``lenet5``, ``vgg``, ``resnet``, ``allconv``, a timm name, tv:NAME).
        data: dataset name (``shapes``, ``fashion-mnist``, ``mnist5k``), image folder or CSV list.
        recipe: a zoo recipe name; its settings are the defaults, ``options`` override them.
        quiet: no progress bars or tables.
        group: the distributed run's Group when the caller joined it (default: join it here).
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
    missing = [k for k in ("arch", "data") if k not in settings]
    if missing:
        raise NetlensError(
            f"say what to train: no {' and no '.join(missing)} given (--arch NAME --data DATA, "
            "or --recipe NAME; arch=, data=, recipe= in Python)"
        )
    command = settings.pop("command", None)
    cfg = TrainConfig.from_dict(settings)
    return run(cfg, host=host, quiet=quiet, command=command or _argv_command(), group=group)


def _argv_command() -> str | None:
    """The shell command, when called from the ``netlens`` CLI (as typed: a ``--distributed``
    worker's argv lacks ``--distributed N``, which its launcher passes on)."""
    from ..distributed.parent import typed_command

    typed = typed_command()
    if typed is not None and typed[:1] == ["train"]:
        return "netlens " + shlex.join(typed)
    if Path(sys.argv[0]).name == "netlens" and len(sys.argv) > 1 and sys.argv[1] == "train":
        return "netlens " + shlex.join(sys.argv[1:])
    return None
