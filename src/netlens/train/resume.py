"""Resumable runs: the state written after every epoch to ``<out>.last.pt`` and read back.

The state holds model, optimizer and schedule states, the RNG states of the augmentation (and
of the loader's worker seeds; an epoch's data order comes from the seed and the epoch), the
history and the best epoch so far, so a resumed run continues exactly where the interrupted one
stopped. It is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import NetlensError
from .config import TrainConfig

if TYPE_CHECKING:
    from .trainer import Session

__all__ = ["FREE_ON_RESUME", "last_path", "load_state", "save_state"]

# the settings a resumed run may change: where it runs and how it reads, never what it learns
# (the data split, the model, the optimisation and the schedule's length)
FREE_ON_RESUME = ("resume", "out", "strict", "threads", "workers", "device")


def last_path(out: Path) -> Path:
    """Where the resumable state of ``out`` lives (``model.pt`` → ``model.last.pt``)."""
    return out.with_name(out.stem + ".last.pt")


def save_state(s: Session, state: dict[str, Any]) -> None:
    """Write model, optimizer, schedule, RNG states and history to ``<out>.last.pt``."""
    rng = {
        "loader": s.train_loader.generator.get_state(),
        "augment": s.gen.get_state(),
        "torch": torch.get_rng_state(),
    }
    payload = {
        "config": s.cfg.to_dict(),
        "model": s.model.state_dict(),
        "optimizer": s.opt.state_dict(),
        "scheduler": s.sched.state_dict(),
        "rng": rng,
        **state,
    }
    path = last_path(s.out)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, tmp)
    tmp.replace(path)


def load_state(s: Session) -> dict[str, Any]:
    """Restore a run from ``<out>.last.pt``; the settings must match the interrupted run."""
    path = last_path(s.out)
    if not path.is_file():
        raise NetlensError(f"--resume: no saved state at {path}; train without --resume first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    now = s.cfg.to_dict()
    defaults = TrainConfig(arch="", data="").to_dict()
    for key, value in now.items():
        if key in FREE_ON_RESUME:
            continue
        before = saved["config"].get(key, defaults.get(key))
        if before != value:
            raise NetlensError(
                f"--resume: {path} is from a run with {key}={before!r}, not {value!r}; resume "
                f"with the same settings (only {', '.join(FREE_ON_RESUME[3:])} may change)"
            )
    s.model.load_state_dict(saved["model"])
    s.opt.load_state_dict(saved["optimizer"])
    s.sched.load_state_dict(saved["scheduler"])
    s.train_loader.generator.set_state(saved["rng"]["loader"])
    s.gen.set_state(saved["rng"]["augment"])
    torch.set_rng_state(saved["rng"]["torch"])
    s.notes.append(f"resumed after epoch {saved['epoch']}")
    return {k: saved[k] for k in ("epoch", "history", "best", "best_state", "elapsed")}
