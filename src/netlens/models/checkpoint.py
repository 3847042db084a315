"""The netlens checkpoint: one ``.pt`` dict that ``torch.load(weights_only=True)`` can read.

Keys: ``format`` (``"netlens-checkpoint"``), ``version``, ``arch`` and ``arch_kwargs``,
``state_dict``, ``classes``, ``preprocess`` (a :class:`~netlens.images.Preprocess` dict) and
``record`` (free-form JSON-able training record: command, data, epochs, metrics, device, time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

FORMAT = "netlens-checkpoint"
VERSION = 1


def is_checkpoint(obj: Any) -> bool:
    """True for a dict written by :func:`write_checkpoint`."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def make_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (tensors copied to CPU, contiguous)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "state_dict": state,
        "classes": list(classes) if classes is not None else None,
        "preprocess": dict(preprocess or {}),
        "record": dict(record or {}),
    }


def write_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (a temp file renamed into place), so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def check_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Fail clearly on a checkpoint from a newer netlens or with missing keys."""
    if int(ckpt.get("version", 0)) > VERSION:
        raise ModelLoadError(
            f"{path} is a netlens checkpoint version {ckpt['version']}; this netlens reads "
            f"version {VERSION}: upgrade netlens"
        )
    for key in ("arch", "state_dict"):
        if key not in ckpt:
            raise ModelLoadError(f"{path} is a netlens checkpoint without '{key}'; re-save it")
