"""Which entry of a training checkpoint dict holds the weights netlens explains, and the other
sets of weights beside it (an EMA or SWA copy, a teacher's) that a warning line names; and
what is not a set of weights netlens can load (a dynamically quantized model's state_dict)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import NetlensWarning
from ..naming import display_path

__all__ = ["WEIGHT_KEYS", "averaged_kind", "packed_params", "weight_sets"]

# where training scripts keep the weights in a checkpoint dict (kuangliu/pytorch-cifar: "net")
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "model_state", "net", "network")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")


def averaged_kind(name: Any) -> str | None:
    """``"EMA"`` or ``"averaged"`` for the name of an averaged copy of the weights (``ema``,
    ``model_ema_state_dict``, ``swa_model``, ``averaged_params``), else None."""
    low = str(name).lower()
    if "ema" in low:
        return "EMA"
    return "averaged" if "swa" in low or "averag" in low else None


def _is_set(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(t, torch.Tensor) for t in value.values())
    )


def weight_sets(payload: Any) -> list[str]:
    """The entries of a checkpoint dict that are dicts of tensors (sets of weights)."""
    if not isinstance(payload, dict):
        return []
    return [k for k, v in payload.items() if _is_set(v)]


def _weights_key(obj: dict[str, Any]) -> str | None:
    """The entry of a checkpoint dict that holds the weights: the first of the usual names
    whose value is a dict of tensors (``"model"`` may hold the model's config), else the one
    set of weights that is not an averaged copy, else the averaged copy when it is the only
    set (a release that keeps just the EMA weights)."""
    sets = weight_sets(obj)
    key = next((k for k in WEIGHT_KEYS if k in sets), None)
    if key is not None:
        return key
    found = [k for k in sets if averaged_kind(k) is None]
    if found:
        return found[0] if len(found) == 1 else None
    ema = [k for k in sets if averaged_kind(k) is not None]
    return ema[0] if len(ema) == 1 else None


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        key = _weights_key(obj)
        if key is not None:
            obj = obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            items = list(obj.items())
            rest = [(k, v) for k, v in items if k != "n_averaged"]
            if len(rest) < len(items) and all(k.startswith("module.") for k, _ in rest):
                items = rest  # torch.optim.swa_utils.AveragedModel: its count beside module.*
            state = OrderedDict((k.removeprefix("module."), v) for k, v in items)
            meta = getattr(obj, "_metadata", None)
            if meta is not None:  # module versions that load_state_dict passes on
                state._metadata = OrderedDict(  # type: ignore[attr-defined]
                    (k.removeprefix("module."), v) for k, v in meta.items()
                )
            return state
    return None


def packed_params(obj: Any) -> str | None:
    """The first ``X._packed_params`` entry of a state_dict saved after
    ``torch.ao.quantization.quantize_dynamic`` (its Linear layers keep a dtype and a tuple of
    packed weights, not tensors), bare or under one of :data:`WEIGHT_KEYS`; else None."""
    if not isinstance(obj, dict):
        return None
    inner = [obj[k] for k in WEIGHT_KEYS if isinstance(obj.get(k), dict)]
    for state in (obj, *inner):
        for key in state:
            if str(key).endswith("._packed_params._packed_params"):
                return str(key).removesuffix("._packed_params")
    return None


def _say_which_copy(payload: Any, source: Path) -> None:
    """A training checkpoint that holds other sets of weights beside the one explained (an
    EMA copy: timm's train.py with ``--model-ema``; an SWA model; a teacher): a warning line
    names them, and one says when the explained set is itself an averaged copy."""
    if not isinstance(payload, dict):
        return
    main = _weights_key(payload)
    if main is None:
        return
    name = display_path(source.name)
    others = [k for k in weight_sets(payload) if k != main]
    others += [  # timm's EMA names, even holding more than tensors
        k for k in _EMA_KEYS if k != main and k not in others and isinstance(payload.get(k), dict)
    ]
    kind = averaged_kind(main)
    if not others and kind is not None:
        warnings.warn(
            f"{name} holds only an {kind} copy of the weights ('{main}'): explaining those",
            NetlensWarning,
            stacklevel=3,
        )
    if not others:
        return
    count = {1: "two", 2: "three", 3: "four"}.get(len(others), str(len(others) + 1))
    named = [f"its {averaged_kind(k)} copy '{k}'" if averaged_kind(k) else f"'{k}'" for k in others]
    shown = ", ".join([f"'{main}'", *named[:-1]]) + " and " + named[-1]
    one = averaged_kind(others[0])
    which = f"the {one} weights, save them on their own" if len(others) == 1 and one else ""
    warnings.warn(
        f"{name} holds {count} sets of weights, {shown}: explaining '{main}'; to explain "
        f"{which or 'another set, save it on its own'} (torch.save(ckpt['{others[0]}'], path)) "
        "and load that file",
        NetlensWarning,
        stacklevel=3,
    )
