"""The training record a netlens checkpoint stores: how the model was made (plain JSON)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import torch

from .device import device_name

if TYPE_CHECKING:
    from .trainer import Session

__all__ = ["make_record", "test_cut"]


def make_record(
    s: Session, state: dict[str, Any], test: Any, command: str | None, final: bool = True
) -> dict[str, Any]:
    """The training record stored in the checkpoint (plain JSON types only); ``final``: the
    run has finished (the checkpoints written after each epoch are not complete)."""
    images = sum(r["images"] for r in state["history"])
    train_secs = sum(r["seconds"] for r in state["history"])
    cfg = s.cfg.to_dict()
    record = {
        "command": command
        or "netlens.train(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items() if v) + ")",
        **s.data_info,  # data (an absolute path when local) and heldout: see .heldout
        "epochs": s.cfg.epochs,
        "config": cfg,
        "history": state["history"],
        "best_epoch": state["best"]["epoch"],
        "val": state["best"],
        "test": test,
        # a test scored on --max-batches' first batches only is no complete run's
        "complete": final and (test is not None or not s.splits.test) and not test_cut(test),
        "device": device_name(s.device),
        "processes": s.group.world,
        "wall_time_s": round(state["elapsed"], 2),
        "images_per_s": round(images / train_secs, 1) if train_secs else None,
        "params": s.params[0],
        "trainable_params": s.params[1],
        "frozen": s.frozen,
        "skipped": list(s.skipped),
        "single_image_steps": s.single_steps,
        "torch": str(torch.__version__),
        "python": sys.version.split()[0],
    }
    return json.loads(json.dumps(record))  # weights_only-loadable


def test_cut(test: Any) -> bool:
    """Whether ``--max-batches`` cut the test evaluation short (``cut_by_max_batches``)."""
    return bool(test and test.get("cut_by_max_batches"))
