"""The architecture and preprocessing a training checkpoint records.

timm's ``train.py`` saves ``{"arch", "state_dict", "args"}`` (its argparse options), fine-tuning
scripts ``{"arch": "vgg16", ...}`` of torchvision's model, torchvision's reference ``train.py``
``{"model", "args": Namespace(model=...)}``, a LightningModule that calls
``timm.create_model(self.hparams.model_name)`` its name under ``hyper_parameters``; a cleaned
state_dict beside the ``args.yaml`` timm's train.py writes is read with those options
(:mod:`netlens.models.timm_args`). A name read from a file is only ever a registry name (a Hub
id of timm's own, ``hf-hub:timm/resnet18.a1_in1k``, is its name and tag): never code to import.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelLoadError
from ..naming import display_path
from ..preprocess.from_model import TIMM_DATA_KEYS, timm_spec, torchvision_reference_spec
from .factory import check_arch, create_arch

if TYPE_CHECKING:
    from ..preprocess import Preprocess
    from .load import LoadedModel, LoadRequest

__all__ = ["arch_source", "hparams_data", "recorded_arch", "recorded_preprocess", "train_args"]


def recorded_arch(
    payload: Any, state: dict[str, torch.Tensor], source: Path, req: LoadRequest
) -> str | None:
    """The timm or torchvision architecture a training checkpoint names, used when no
    ``arch`` is given; None otherwise.

    timm's train.py saves ``{"arch": "resnet18", "state_dict": ..., "args": ...}``, fine-tuning
    scripts ``{"arch": "vgg16", "class_to_idx": ..., "state_dict": ...}`` with torchvision's
    model, torchvision's reference train.py ``{"model": ..., "args": Namespace(model=...)}``. A
    plain name is timm's or torchvision's: the one whose weight names the file holds (timm's VGG
    names its head otherwise than torchvision's). When both fit (a ResNet is named alike in
    both), timm's is taken for timm's script (its ``args``) and a Lightning module's
    ``timm.create_model(hparams.model_name)``, torchvision's otherwise: pytorch/examples'
    ImageNet script and fine-tuning tutorials save ``{"arch", "state_dict"}`` of torchvision's
    models, and the two libraries preprocess differently. A name from a file is only a
    registry name: never code to import."""
    from .factory import parse_user_arch
    from .meta import shapes_on_meta

    if req.arch or not isinstance(payload, dict):
        return None
    args = train_args(payload)
    name = payload.get("arch", args.get("model"))
    timm_first = bool(args) and "val_resize_size" not in args  # timm's train.py options
    if name is None and (found := _hparams_arch(payload)) is not None:
        name, timm_first = found[0], True
    if not isinstance(name, str):
        return None
    name = _registry_name(name, source)
    if parse_user_arch(name) is not None:
        return None
    order = [name]
    if not name.startswith(("tv:", "timm:")):
        order = [name, f"tv:{name}"] if timm_first else [f"tv:{name}", name]
    sized = []
    for candidate in order:
        try:
            check_arch(candidate, req.host, user_code=False)
        except ModelLoadError:
            continue  # not in that registry (or a name of the trainer's own)
        # the file chose the architecture: its size is checked before anything is built
        shapes = shapes_on_meta(lambda c=candidate: create_arch(c, None, req.host))
        if shapes is None or shapes.far_larger_than(state):
            continue
        names = {k for k in shapes.shapes if not k.endswith("num_batches_tracked")}
        if names <= state.keys():
            return candidate
        sized.append(candidate)
    return sized[0] if sized else None  # (its load then says what does not fit)


# where a LightningModule's save_hyperparameters() keeps the timm/torchvision name it builds
_HPARAM_ARCH_KEYS = (
    "arch",
    "architecture",
    "model_name",
    "model_arch",
    "backbone",
    "backbone_name",
    "timm_model",
    "timm_name",
    "encoder_name",
)


def _registry_name(name: str, source: Path) -> str:
    """The registry name a training script recorded: a Hub id of timm's own
    (``hf-hub:timm/resnet18.a1_in1k``, as ``train.py --model`` takes it) is the name and its
    tag, built from timm's code and the tag's data config (nothing is fetched); any other hub
    id, path or URL is refused, saying to give the architecture."""
    from .arch_options import check_arch_name
    from .timm_args import hub_free

    try:
        return check_arch_name(hub_free(name), display_path(source.name))
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{exc}; netlens never fetches what a file names: say which architecture the "
            "weights are, give --arch NAME"
        ) from None


def _hparams_arch(payload: dict[str, Any]) -> tuple[str, str] | None:
    """The architecture name a Lightning checkpoint's ``hyper_parameters`` record
    (``self.model = timm.create_model(self.hparams.model_name, ...)``), as a plain registry
    name (a Hub id ``timm/resnet18.a1_in1k`` is its name and tag), and where it is; None when
    none does."""
    from .arch_options import _ARCH_NAME
    from .timm_args import hub_free

    for outer in ("hyper_parameters", "hparams"):
        hp = payload.get(outer)
        if not isinstance(hp, dict):
            continue
        for key in _HPARAM_ARCH_KEYS:
            value = hp.get(key)
            if not isinstance(value, str):
                continue
            value = hub_free(value)
            if _ARCH_NAME.fullmatch(value):
                return value, f"{outer}.{key}"
    return None


def arch_source(payload: dict[str, Any]) -> str:
    """Where a checkpoint names its architecture (the order :func:`recorded_arch` reads)."""
    from .timm_args import ARGS_YAML, YamlArgs

    if "arch" in payload:
        return "'arch'"
    if train_args(payload).get("model") is not None:
        yaml = isinstance(payload.get("args"), YamlArgs)
        return f"{ARGS_YAML} ('model', beside the file)" if yaml else "'args.model'"
    found = _hparams_arch(payload)
    return f"'{found[1]}'" if found else "record"


def train_args(payload: dict[str, Any]) -> dict[str, Any]:
    """The training script's options a checkpoint keeps (an ``argparse.Namespace`` under
    ``args``, as timm's and torchvision's reference scripts save it); empty when none."""
    args = payload.get("args")
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else {}


def hparams_data(payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The data options a Lightning checkpoint's ``hyper_parameters`` record under timm's
    names (``img_size``, ``mean``, ``std``, ``crop_pct``, ...; ``image_size`` as ``img_size``):
    plain numbers, strings and lists only, and where they are."""
    for outer in ("hyper_parameters", "hparams"):
        hp = payload.get(outer)
        if not isinstance(hp, dict):
            continue
        hp = {("img_size" if k == "image_size" else k): v for k, v in hp.items()}
        found = {k: _plain(hp[k]) for k in TIMM_DATA_KEYS if _plain(hp.get(k)) is not None}
        if found:
            return found, outer
    return {}, ""


def _plain(value: Any) -> Any:
    """A number, a string or a list/tuple of numbers as it is; None for anything else."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return tuple(value)
    return None


def recorded_preprocess(loaded: LoadedModel, payload: Any) -> None:
    """The preprocessing the training script's recorded options say, over the architecture's
    default: timm's ``--img-size``/``--mean``/``--std``/``--crop-pct``, torchvision's
    ``--val-resize-size``/``--val-crop-size``, or a Lightning module's ``hyper_parameters``
    under timm's names (``img_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``)."""
    if not isinstance(payload, dict):
        return
    args, pre = train_args(payload), loaded.preprocess
    if pre is None:
        return
    if not args:
        hp, where = hparams_data(payload)
        if hp and pre.engine == "timm":
            from .timm_args import check_data_args

            check_data_args(hp, f"the checkpoint's {where}")
            loaded.preprocess = timm_spec(loaded.model, hp, what=where)
        elif hp:
            loaded.preprocess = _overridden(pre, hp, where)
        return
    from .timm_args import ARGS_YAML, YamlArgs, check_data_args

    yaml = isinstance(payload.get("args"), YamlArgs)
    if yaml:
        loaded.card["train_args_from"] = f"{ARGS_YAML} beside the file (timm's train.py)"
    if pre.engine == "timm":
        check_data_args(
            args, f"the {ARGS_YAML} beside the file" if yaml else "the checkpoint's args"
        )
    if pre.engine == "timm" and isinstance(payload.get("args"), YamlArgs):
        loaded.preprocess = timm_spec(loaded.model, args, owner=f"{ARGS_YAML}'s")
    elif pre.engine == "timm":
        loaded.preprocess = timm_spec(loaded.model, args)
    else:
        loaded.preprocess = torchvision_reference_spec(loaded.model, args) or pre


def _overridden(pre: Preprocess, hp: dict[str, Any], where: str) -> Preprocess:
    """A torchvision model's spec with what its Lightning ``hyper_parameters`` record."""
    from ..preprocess.from_model import with_overrides

    size = hp.get("img_size", hp.get("input_size"))
    changes = {k: hp[k] for k in ("mean", "std", "crop_pct", "interpolation") if k in hp}
    for k in ("mean", "std"):
        if isinstance(changes.get(k), (int, float)):
            changes[k] = (float(changes[k]),) * (pre.channels or 3)
    shown = ", ".join(f"{k} {v}" for k, v in hp.items())
    spec = with_overrides(pre, input_size=size, **changes)
    return spec.override(source=f"{pre.source} with the checkpoint's {where} ({shown})")
