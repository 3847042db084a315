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

from ..data.labels import nfc
from ..errors import NetlensError
from .config import TrainConfig
from .heldout import file_list_change

if TYPE_CHECKING:
    from .trainer import Session

__all__ = ["FREE_ON_RESUME", "last_path", "load_state", "save_state"]

# the settings a resumed run may change: where it runs and how it reads, never what it learns
# (the data split, the model, the optimisation and the schedule's length)
FREE_ON_RESUME = ("resume", "out", "strict", "threads", "workers", "device")
# the settings that may name files: the same file however it is spelled (``DIR/``, ``./DIR``,
# an absolute path) is the same setting
_PATHS = ("data", "init")


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
        "classes": list(s.splits.classes),
        "paths": {k: _resolved(getattr(s.cfg, k)) for k in _PATHS},
        "files": s.files,  # the train and validation file lists (count, hash, names)
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
    saved = _read_state(path)
    now = s.cfg.to_dict()
    defaults = TrainConfig(arch="", data="").to_dict()
    for key, value in now.items():
        if key in FREE_ON_RESUME:
            continue
        before = saved["config"].get(key, defaults.get(key))
        if key in _PATHS and _same_path(before, value, saved.get("paths", {}).get(key)):
            continue
        if before != value:
            raise NetlensError(
                f"--resume: {path} is from a run with {key}={before!r}, not {value!r}; resume "
                f"with the same settings (only {', '.join(FREE_ON_RESUME[3:])} may change)"
            )
    _check_classes(path, saved.get("classes"), list(s.splits.classes))
    _check_files(path, saved.get("files"), s.files)
    try:
        s.model.load_state_dict(saved["model"])
    except RuntimeError as exc:  # a state saved before classes were recorded
        why = " ".join(str(exc).split())[:300]
        raise NetlensError(
            f"--resume: {path} holds a model this run's does not fit ({why}); the data changed "
            "since (a class folder added or removed?): resume with the same data, or train "
            "afresh without --resume"
        ) from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise _damaged(path, f"its model state: {exc}") from None
    try:
        s.opt.load_state_dict(saved["optimizer"])
        s.sched.load_state_dict(saved["scheduler"])
        s.train_loader.generator.set_state(saved["rng"]["loader"])
        s.gen.set_state(saved["rng"]["augment"])
        torch.set_rng_state(saved["rng"]["torch"])
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise _damaged(path, f"its optimizer, schedule or random states: {exc}") from None
    s.notes.append(f"resumed after epoch {saved['epoch']}")
    return {k: saved[k] for k in ("epoch", "history", "best", "best_state", "elapsed")}


# what a state holds (as :func:`save_state` writes it): key → the types its value may have
_SHAPE: dict[str, tuple[type, ...]] = {
    "config": (dict,),
    "model": (dict,),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "rng": (dict,),
    "epoch": (int,),
    "history": (list,),
    "best": (dict, type(None)),
    "best_state": (dict, type(None)),
    "elapsed": (int, float),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "classes": (list, type(None)),
    "paths": (dict,),
    "files": (dict, type(None)),
}


def _damaged(path: Path, why: str) -> NetlensError:
    why = " ".join(why.split())[:200]
    return NetlensError(
        f"--resume: {path} is damaged or not a netlens resume state ({why}); delete it and "
        "train without --resume"
    )


def _read_state(path: Path) -> dict[str, Any]:
    """The state in ``path``, read with ``weights_only=True`` (tensors and plain data only:
    netlens writes no other objects, so a file holding any is refused, never unpickled) and
    checked to have the keys and types :func:`save_state` writes."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: a torn write, another file, pickles
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
        if "weights_only" in first or "Unsupported global" in str(exc):
            first = "it holds objects other than tensors and plain data"
        raise _damaged(path, first or type(exc).__name__) from None
    if not isinstance(saved, dict):
        raise _damaged(path, f"a {type(saved).__name__}, not a mapping")
    for key, types in (*_SHAPE.items(), *_OPTIONAL.items()):
        if key not in saved:
            if key in _SHAPE:
                raise _damaged(path, f"no {key!r}")
            continue
        value = saved[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise _damaged(path, f"its {key!r} is a {type(value).__name__}")
    rng = saved["rng"]
    for key in ("loader", "augment", "torch"):
        if not isinstance(rng.get(key), torch.Tensor):
            raise _damaged(path, f"its random state {key!r} is missing or not a tensor")
    for key in ("model", "best_state"):
        if any(not isinstance(v, torch.Tensor) for v in (saved[key] or {}).values()):
            raise _damaged(path, f"its {key!r} holds values other than tensors")
    best = saved["best"]
    if best is not None and not isinstance(best.get("epoch"), int):
        raise _damaged(path, "its best epoch is not a number")
    classes = saved.get("classes")
    if classes is not None and not all(isinstance(c, str) for c in classes):
        raise _damaged(path, "its class names are not all text")
    files = saved.get("files")
    if files is not None and not all(isinstance(v, dict) for v in files.values()):
        raise _damaged(path, "its file lists are not mappings")
    if not all(isinstance(k, str) for k in saved["config"]):
        raise _damaged(path, "its settings are not a mapping of names")
    return saved


def _resolved(value: Any) -> str | None:
    """``value`` as an absolute path when it names a file or folder that exists; else None."""
    if not isinstance(value, (str, Path)) or not str(value):
        return None
    try:
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else None
    except (OSError, ValueError, RuntimeError):
        return None


def _same_path(before: Any, now: Any, saved_resolved: str | None) -> bool:
    """Whether two spellings of a path setting name the same file or folder: resolved now,
    or ``now`` resolved against what the saved run resolved (its working folder may differ)."""
    here = _resolved(now)
    if here is None:
        return False
    return here == saved_resolved or here == _resolved(before)


def _check_files(path: Path, before: Any, now: Any) -> None:
    """One line when the training or validation files differ from the saved run's: the
    seeded holdout would be drawn anew, so images it trained on could be validated on."""
    if not before or not now:  # a state saved before file lists were, or a named dataset
        return
    change = file_list_change(before, now)
    if change is None:
        return
    raise NetlensError(
        f"--resume: the data's files changed since the saved run ({path.name}): {change}; "
        "the split would differ from the one it trained on, so train afresh without --resume "
        "(or restore the data as it was)"
    )


def _check_classes(path: Path, before: list[str] | None, now: list[str]) -> None:
    """One line when the data's classes differ from the saved run's."""
    if before is None or [nfc(c) for c in before] == [nfc(c) for c in now]:
        return

    def listed(names: list[str]) -> str:
        return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")

    added = [c for c in now if nfc(c) not in {nfc(b) for b in before}]
    gone = [c for c in before if nfc(c) not in {nfc(n) for n in now}]
    change = "; ".join(
        part
        for part in (
            f"new: {listed(added)}" if added else "",
            f"gone: {listed(gone)}" if gone else "",
        )
        if part
    )
    raise NetlensError(
        f"--resume: the saved run ({path.name}) had {len(before)} classes ({listed(before)}), the "
        f"data now has {len(now)} ({listed(now)}{'; ' + change if change else ''}); resume with "
        "the data it was trained on, or train afresh without --resume"
    )
