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

from ..errors import NetlensWarning
from ..naming import display_path

if TYPE_CHECKING:
    from .load import LoadRequest

__all__ = ["ARGS_YAML", "YamlArgs", "hub_free", "read_args_yaml", "with_args_yaml"]

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
    :class:`YamlArgs`), when the file records none of its own and is not netlens' or a folder;
    ``req.payload`` becomes it, so the checkpoint is read as timm's CheckpointSaver writes one.
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
    req.payload = out  # type: ignore[misc]  # (a cached_property: the instance's value)
    return out
