"""timm's ``train.py`` options as its output folder keeps them.

timm's train.py writes ``args.yaml`` (``yaml.safe_dump(vars(args))``) into its output folder
beside ``checkpoint-*.pth.tar`` and ``model_best.pth.tar``; ``clean_checkpoint.py`` strips a
checkpoint to its bare (EMA) state_dict, which keeps no ``args`` of its own. A file that records
no options is read with its sibling ``args.yaml`` as its recorded options, the way a
CheckpointSaver file's ``args`` Namespace is (:func:`netlens.models.recorded_arch.train_args`).
A name read there, as any name a file records, is only a registry name: never code to import.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelLoadError, NetlensWarning
from ..naming import display_path

if TYPE_CHECKING:
    from .load import LoadRequest

__all__ = [
    "ARGS_YAML",
    "YamlArgs",
    "check_data_args",
    "hub_free",
    "read_args_yaml",
    "with_args_yaml",
]

ARGS_YAML = "args.yaml"  # the name timm's train.py gives it
_MAX_BYTES = 1 << 20
# a Hugging Face Hub id of timm's own (hf-hub:timm/resnet18.a1_in1k): the name and its tag
_TIMM_HUB = re.compile(r"^(hf[-_]hub:)?timm/")


class YamlArgs(argparse.Namespace):
    """timm train.py's options read from the ``args.yaml`` beside a checkpoint."""


def hub_free(name: str) -> str:
    """``name`` without a Hub prefix of timm's own (``timm/resnet18.a1_in1k`` and
    ``hf-hub:timm/resnet18.a1_in1k`` are ``resnet18.a1_in1k``: the architecture and its tag)."""
    return _TIMM_HUB.sub("", name.strip())


def read_args_yaml(source: Path) -> dict[str, Any] | None:
    """The options in the ``args.yaml`` beside ``source``, when there is one that timm's
    train.py wrote (a mapping with a ``model`` name); None otherwise, unreadable ones too."""
    path = source.parent / ARGS_YAML
    try:
        if source.is_dir() or not path.is_file() or path.stat().st_size > _MAX_BYTES:
            return None
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # plain data only
    except Exception:  # noqa: BLE001 - not readable, not YAML, or no PyYAML: not timm's
        return None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return None
    return {str(k): v for k, v in data.items()}


def _base(name: str) -> str:
    """The architecture a name builds, tag and timm: prefix aside (``resnet18.a1_in1k``)."""
    return hub_free(name).removeprefix("timm:").split(".", 1)[0]


def with_args_yaml(payload: Any, source: Path, req: LoadRequest) -> Any:
    """``payload`` with the options of the ``args.yaml`` beside it as its ``args`` (a
    :class:`YamlArgs`), when the file records none of its own and is not netlens' or a folder:
    the checkpoint as timm's CheckpointSaver writes one (the loader reads it in its place).
    A bare state_dict becomes ``{"state_dict": payload, "args": ...}``. An ``--arch`` or the
    file's own ``arch`` of another architecture than the yaml's ``model``: the yaml is another
    run's (its data options are its model's), not used, and a warning line says so."""
    from .checkpoint import is_checkpoint

    if not isinstance(payload, dict) or is_checkpoint(payload) or source.is_dir():
        return payload
    if "args" in payload or "hyper_parameters" in payload or "hparams" in payload:
        return payload  # the file records its own options
    data = read_args_yaml(source)
    if data is None:
        return payload
    model, name = data["model"], display_path(source.name)
    own = payload.get("arch")
    if isinstance(own, str) and _base(own) != _base(model):
        warnings.warn(
            f"{name} records 'arch' {own}, the {ARGS_YAML} beside it model {model}: that "
            f"{ARGS_YAML} is another run's; not used (its data options are {model}'s)",
            NetlensWarning,
            stacklevel=4,
        )
        return payload
    if req.arch and _base(req.arch) != _base(model):
        warnings.warn(
            f"{name}: --arch {req.arch} is built, though the {ARGS_YAML} beside it records model "
            f"{model}; its data options (size, mean, std, crop) are {model}'s training's and are "
            f"not used: {req.arch}'s defaults are (drop --arch to build {model} with them)",
            NetlensWarning,
            stacklevel=4,
        )
        return payload
    bare = bool(payload) and all(isinstance(v, torch.Tensor) for v in payload.values())
    out = {"state_dict": payload} if bare else dict(payload)
    out["args"] = YamlArgs(**data)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _data_arg_problem(key: str, value: Any, channels: int) -> str | None:
    """What ``value`` of timm train.py's data option ``key`` should be, when it is not that
    (what timm's ``resolve_data_config`` would take; it asserts, or fails on, anything else)."""
    from ..preprocess.spec import MAX_CROP_PCT

    if key == "img_size" and not (isinstance(value, int) and not isinstance(value, bool)):
        return "one whole number of pixels (--img-size 224); input_size: [3, H, W] for H≠W"
    if key == "img_size" and value < 1:
        return "a positive number of pixels (--img-size 224)"
    if key == "input_size" and not (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return "three positive whole numbers, channels, height and width ([3, 224, 224])"
    if key in ("mean", "std") and not (
        isinstance(value, (list, tuple))
        and len(value) in (1, channels)
        and all(_number(v) for v in value)
        and (key == "mean" or all(v > 0 for v in value))
    ):
        sign = "positive " if key == "std" else ""
        return (
            f"a list of {channels} {sign}numbers, one per input channel, or of one for all "
            f"([0.5] or [0.5, 0.5, 0.5])"
        )
    if key == "crop_pct" and not (_number(value) and 0 < value <= MAX_CROP_PCT):
        return f"a number in (0, {MAX_CROP_PCT:g}], the share of the resized image kept (0.875)"
    if key in ("interpolation", "crop_mode") and not isinstance(value, str):
        return "a name (bilinear, bicubic, ...)" if key == "interpolation" else "a name (center)"
    return None


def check_data_args(args: dict[str, Any], where: str) -> None:
    """timm train.py's data options in ``args`` (from ``where``: args.yaml, the checkpoint's
    ``args``, its ``hyper_parameters``) of a type or length timm cannot take, refused in one
    line naming the option and what it should be; ``crop_pct: 0`` too (timm would drop it for
    its default without a word). Unset ones (None, empty) are left to timm's defaults."""
    from ..preprocess.from_model import TIMM_DATA_KEYS

    size = args.get("input_size")
    channels = size[0] if isinstance(size, (list, tuple)) and len(size) == 3 else 3
    channels = channels if isinstance(channels, int) and channels >= 1 else 3
    for key in TIMM_DATA_KEYS:
        value = args.get(key)
        if value is None or value == "":
            continue
        problem = _data_arg_problem(key, value, channels)
        if problem:
            shown = repr(value) if not isinstance(value, (list, tuple)) else list(value)
            raise ModelLoadError(
                f"{where} records {key}: {str(shown)[:60]}, which timm cannot use: it should "
                f"be {problem}; fix or delete that line"
            )
