"""Check a netlens checkpoint's contents before anything is built or allocated.

:func:`validate_checkpoint` looks at the dict ``torch.load(weights_only=True)`` returned — plain
Python, no model is built — and answers every problem with one :class:`ModelLoadError` line
that names the field: the keys, ``format``/``version``, ``arch`` and ``arch_kwargs`` (see
:mod:`.arch_options`), ``classes``, ``preprocess`` (sizes and crops that cannot blow up
memory), ``record`` (plain JSON data, bounded) and ``state_dict`` (CPU tensors only).
Traversals are bounded (depth and node count), so a self-referencing or exponentially shared
pickle cannot hang or exhaust memory here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, NetlensError
from ..naming import display_path
from ..preprocess.spec import MAX_CROP_PCT, MAX_SIDE
from .arch_options import _short, check_arch_kwargs, check_arch_name

__all__ = ["CheckpointMeta", "check_before_save", "validate_checkpoint"]

FORMAT = "netlens-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "arch", "state_dict")
OPTIONAL_KEYS = ("arch_kwargs", "classes", "preprocess", "record")
MAX_CLASSES = 1 << 20
MAX_CLASS_NAME = 256
MAX_TENSORS = 1 << 20
_DTYPES = {
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
}
_RECORD_DEPTH = 16
_RECORD_NODES = 100_000


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint whose every field passed :func:`validate_checkpoint`."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors in the file."""
        return sum(t.numel() * t.element_size() for t in self.state_dict.values())


def validate_checkpoint(
    ckpt: dict[str, Any], path: str | Path, extra_options: Iterable[str] | None = ()
) -> CheckpointMeta:
    """The checkpoint's fields, checked; one :class:`ModelLoadError` line on the first problem.

    Args:
        ckpt: what ``torch.load(path, weights_only=True)`` returned (``format`` already matched).
        path: the file, for messages.
        extra_options: further ``arch_kwargs`` names to allow (a netlens arch's parameters);
            None: any option name not denied (the user's own architecture code).
    """
    where = display_path(Path(path).name)
    _check_keys(ckpt, where)
    version = _check_version(ckpt["version"], where)
    arch = check_arch_name(ckpt["arch"], where)
    kwargs = check_arch_kwargs(ckpt.get("arch_kwargs"), where, extra_options)
    classes = _check_classes(ckpt.get("classes"), kwargs.get("num_classes"), where)
    return CheckpointMeta(
        arch=arch,
        state_dict=_check_state_dict(ckpt["state_dict"], where),
        arch_kwargs=kwargs,
        classes=classes,
        preprocess=_check_preprocess(ckpt.get("preprocess"), where),
        record=_check_record(ckpt.get("record"), where),
        version=version,
    )


def check_before_save(ckpt: dict[str, Any], path: str | Path, extra_options: Any = ()) -> None:
    """What ``netlens.save`` is about to write, checked as :func:`validate_checkpoint` checks
    it on load: what the loader would refuse is refused now, in one line saying what to do
    instead, never written to a file that cannot be loaded."""
    where = display_path(Path(path).name)
    try:
        validate_checkpoint(ckpt, path, extra_options)
    except ModelLoadError as e:
        arch = ckpt.get("arch")
        arch = arch if isinstance(arch, str) and arch.isprintable() and len(arch) < 80 else "NAME"
        problem = str(e).removeprefix(f"{where}: ")
        cut = min((problem.find(t) for t in _LOAD_ADVICE if t in problem), default=len(problem))
        raise NetlensError(
            f"netlens.save: netlens.load would refuse {where}: {problem[:cut]}; leave that out, "
            "or save model.state_dict() with torch.save and load it with --arch "
            f"{arch} (and --arch-kwargs netlens.load accepts), or pass "
            "the model you build to netlens.load(model)"
        ) from None


# the load-time advice in validation messages, left out of netlens.save's own
_DAMAGED = "; the checkpoint is damaged or not written by netlens.save"
_LOAD_ADVICE = (
    _DAMAGED,
    " (remove it and re-save)",
    "; remove it and re-save",
    "; the file is damaged",
    "; fix the checkpoint's",
)


def _fail(where: str, problem: str) -> ModelLoadError:
    return ModelLoadError(
        f"{where}: {problem}{_DAMAGED} (re-save it, or load its state_dict with --arch)"
    )


def _check_keys(ckpt: dict[str, Any], where: str) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise _fail(where, f"the netlens checkpoint has no {', '.join(repr(k) for k in missing)}")
    odd = [k for k in ckpt if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if odd:
        names = ", ".join(_short(k, 30) for k in odd[:3])
        raise _fail(where, f"the netlens checkpoint has unknown key(s) {names}")


def _check_version(version: Any, where: str) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(where, f"'version' must be a whole number ≥ 1, not {_short(version)}")
    if version > VERSION:
        raise ModelLoadError(
            f"{where} is a netlens checkpoint version {version}; this netlens reads version "
            f"{VERSION}: upgrade netlens"
        )
    return version


def _check_classes(classes: Any, num_classes: Any, where: str) -> list[str] | None:
    if classes is None:
        return None
    if not isinstance(classes, (list, tuple)) or not 1 <= len(classes) <= MAX_CLASSES:
        raise _fail(where, f"'classes' must be a list of 1 to {MAX_CLASSES} names")
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME:
            raise _fail(where, f"class {i} must be a name of 1-{MAX_CLASS_NAME} characters")
        if not name.isprintable():
            raise _fail(where, f"class {i} ({_short(name, 40)}) has control characters")
    if isinstance(num_classes, int) and num_classes != len(classes):
        raise _fail(where, f"it names {len(classes)} classes but builds {num_classes} outputs")
    return list(classes)


def _check_state_dict(state: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not 0 < len(state) <= MAX_TENSORS:
        raise _fail(where, "'state_dict' must be a non-empty dict of tensors")
    for key, t in state.items():
        if not isinstance(key, str) or not 0 < len(key) <= 512:
            raise _fail(where, f"'state_dict' has a key {_short(key, 40)} that is not a name")
        if not isinstance(t, torch.Tensor):
            raise _fail(where, f"state_dict[{key!r}] is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided or t.device.type != "cpu" or t.dtype not in _DTYPES:
            raise _fail(
                where,
                f"state_dict[{key!r}] is a {t.layout}/{t.device.type}/{t.dtype} tensor; "
                "weights are dense CPU tensors of a real or integer dtype",
            )
    return dict(state)


def _check_preprocess(pre: Any, where: str) -> dict[str, Any]:
    """What could blow up memory or time in a recorded Preprocess spec: its size and crop.

    Types and the remaining fields are checked by :class:`~netlens.preprocess.Preprocess`
    itself when the spec is made.
    """
    if pre is None or pre == {}:
        return {}
    if not isinstance(pre, dict) or not all(isinstance(k, str) for k in pre):
        raise _fail(where, "'preprocess' must be a dict of settings")
    _plain_json(pre, "preprocess", where, depth=0, budget=[1000])
    out = dict(pre)
    sides: list[int] = []
    if pre.get("size") is not None:  # ("resize" is derived and descriptive: not read back)
        out["size"] = sides = _check_size(pre["size"], "size", where)
    channels = pre.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise _fail(where, f"preprocess.channels must be 1 or 3, not {_short(channels)}")
    for key in ("mean", "std"):
        if pre.get(key) is not None:
            _check_stats(pre[key], key, where)
    crop = pre.get("crop_pct", 1.0)
    if (
        not _is_number(crop)
        or not 0.0 < crop <= MAX_CROP_PCT
        or max(sides, default=224) / crop > 2 * MAX_SIDE
    ):
        raise _fail(
            where,
            f"preprocess.crop_pct {_short(crop)} must be in (0, {MAX_CROP_PCT:g}] and keep the "
            f"resized input under {2 * MAX_SIDE} pixels per side",
        )
    return out


def _check_size(size: Any, key: str, where: str) -> list[int]:
    sides = [size] if isinstance(size, int) else size
    ok = isinstance(sides, (list, tuple)) and 1 <= len(sides) <= 3
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
        raise _fail(where, f"preprocess.{key} must be [height, width], not {_short(size)}")
    hw = list(sides[-2:]) if len(sides) > 1 else [sides[0], sides[0]]
    if not all(1 <= s <= MAX_SIDE for s in hw):
        raise ModelLoadError(
            f"{where}: preprocess.{key} {_short(hw)} is beyond any image model's input "
            f"(1 to {MAX_SIDE} pixels per side); fix the checkpoint's preprocessing and re-save"
        )
    return hw


def _check_stats(values: Any, key: str, where: str) -> None:
    items = [values] if isinstance(values, (int, float)) else values
    ok = isinstance(items, (list, tuple)) and 1 <= len(items) <= 4
    if not ok or not all(_is_number(v) and abs(v) <= 1e4 for v in items):
        raise _fail(where, f"preprocess.{key} must be 1 to 4 finite numbers")
    if key == "std" and any(v <= 1e-6 for v in items):
        raise _fail(where, "preprocess.std must be positive")


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if record is None:
        return {}
    if not isinstance(record, dict):
        raise _fail(where, f"'record' must be a dict, not a {type(record).__name__}")
    _plain_json(record, "record", where, depth=0, budget=[_RECORD_NODES])
    return record


def _plain_json(value: Any, name: str, where: str, depth: int, budget: list[int]) -> None:
    """Plain JSON-like data (str keys; None/bool/int/float/str/list/tuple/dict), bounded."""
    budget[0] -= 1
    if budget[0] < 0 or depth > _RECORD_DEPTH:
        raise _fail(where, f"'{name}' is nested too deep or too large to be plain settings")
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if len(value) > 1 << 16:
            raise _fail(where, f"{name} is a string of {len(value)} characters")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain_json(v, f"{name}[{i}]", where, depth + 1, budget)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _fail(where, f"{name} has a key {_short(k, 30)} that is not a string")
            _plain_json(v, f"{name}.{k}", where, depth + 1, budget)
        return
    raise _fail(where, f"{_short(name, 60)} is a {type(value).__name__}, not plain data")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
