"""The reproducibility header every result carries: what ran, on what, with which settings.

``meta["run"]`` of every Result (and so the top of every JSON netlens writes) holds the same
keys: ``netlens``, ``torch``, ``python`` versions; ``model`` (name, source, class, SHA-256 of
its weights); ``preprocess`` (the spec actually used); ``layers``; ``data`` (source and label
source, for dataset analyses); ``seed``; ``options``; ``started`` (UTC, ISO 8601); ``seconds``;
and, from the CLI, ``command``.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .analyzers.base import Result
    from .lens import Lens

__all__ = ["HEADER_KEYS", "model_digest", "run_header", "versions"]

HEADER_KEYS = (
    "netlens",
    "torch",
    "python",
    "model",
    "preprocess",
    "layers",
    "data",
    "seed",
    "options",
    "started",
    "seconds",
)


def versions() -> dict[str, str]:
    """netlens, torch and Python versions."""
    import torch

    from . import __version__

    return {"netlens": __version__, "torch": torch.__version__, "python": platform.python_version()}


def model_digest(model: nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(
        {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
    ):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(_bytes(t.detach().cpu().contiguous()) if t.numel() else b"")
    return h.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes; dtypes numpy has no type for (bfloat16, float8) as raw bytes."""
    try:
        return t.numpy().tobytes()
    except TypeError:
        import torch

        return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _model_info(lens: Lens) -> dict[str, Any]:
    return {
        "name": lens.name,
        "source": lens.card.get("source") or lens.name,
        "class": type(lens.model).__name__,
        **({"unwrapped": lens.unwrapped} if getattr(lens, "unwrapped", None) else {}),
        "arch": lens.card.get("arch"),
        "sha256": lens.digest(),
        "task": lens.task,
        "classes": len(lens.classes) if lens.classes else None,
        **({"class_names": source} if (source := getattr(lens.classes, "source", None)) else {}),
        **({"not_imported": held} if (held := lens.card.get("not_imported")) else {}),
        **({"renamed_by": fn} if (fn := lens.card.get("state_dict_renamed_by")) else {}),
        **({"not_loaded": gone} if (gone := lens.card.get("not_loaded")) else {}),
    }


def run_header(
    lens: Lens,
    *,
    started: datetime,
    seconds: float,
    options: dict[str, Any],
    layers: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The header for one analyzer run (see the module doc)."""
    from .analyzers.base import to_jsonable

    header = {
        **versions(),
        "model": _model_info(lens),
        "preprocess": lens.preprocess_info(),
        "layers": layers,
        "data": data,
        "seed": options.get("seed"),
        "options": to_jsonable(dict(options)),
        "started": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    command = _command()
    if command is not None:
        header["command"] = command
    return header


def _command() -> str | None:
    """The netlens command line as the user typed it (a ``--distributed`` worker's argv lacks
    ``--distributed N``: its launcher passes what was typed); None outside the CLI."""
    from .distributed.parent import typed_command

    typed = typed_command()
    if typed is not None:
        return " ".join(["netlens", *typed])
    if sys.argv and sys.argv[0].endswith("netlens"):
        return " ".join(["netlens", *sys.argv[1:]])
    return None


def stamped(
    result: Result,
    lens: Lens,
    *,
    started: datetime,
    clock: float,
    options: dict[str, Any],
    layers: list[str] | None = None,
) -> Result:
    """``result`` with the run header, for a result no :class:`~netlens.analyzers.base.Analyzer`
    stamped (``netlens layers``, a plain-object plugin): ``clock`` is ``time.perf_counter()``
    at ``started``."""
    import time

    seconds = time.perf_counter() - clock
    header = run_header(lens, started=started, seconds=seconds, options=options, layers=layers)
    return result.stamped(header, result.skipped)


def now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(timezone.utc)
