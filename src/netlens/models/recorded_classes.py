"""Class names a model's author saved with it.

Fine-tuning scripts keep the data's class order beside the weights, most often as torchvision
``ImageFolder``'s ``class_to_idx`` (``{"daisy": 0, "rose": 1}``), in the checkpoint dict or set on
the model (``model.class_to_idx = train_data.class_to_idx``, as countless tutorials do); others
save ``idx_to_class``, a list under ``classes``/``class_names``/``categories``/``labels``, or
PyTorch Lightning's ``hyper_parameters`` holding one of those; a timm model made from a Hub
model with its labels has them in ``pretrained_cfg["label_names"]``. That order is the only right
one: ImageFolder numbers folders in text order (``1, 10, 100, 2``), which no later reading of
the folder names can recover. Names that do not fit the model (another count, indices that skip
or repeat) are not used, with one warning line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import DataError, NetlensWarning
from .known_classes import ClassNames

__all__ = ["as_names", "recorded_class_names"]

KEYS = (
    "class_to_idx",
    "idx_to_class",
    "classes",
    "class_names",
    "label_names",  # timm's
    "categories",
    "labels",
    "id2label",  # a transformers config's, kept beside plain weights
    "label2id",
)
# Lightning's hyper_parameters (a LightningModule's own: _hparams; its DataModule's), timm's
# pretrained_cfg, others
NESTED = (
    "hyper_parameters",
    "hparams",
    "_hparams",
    "datamodule_hyper_parameters",
    "pretrained_cfg",
    "metadata",
    "meta",
    "config",
)


def recorded_class_names(
    holder: Any,
    count: Callable[[], int | None],
    where: str,
    module: nn.Module | None = None,
    keys: Sequence[str] = KEYS,
) -> ClassNames | None:
    """The class names in output order that ``holder`` (a checkpoint dict, or a model's
    attributes) records, checked against the model's number of outputs (``count()``, asked
    only when there are names: it may run the model); None when there are none.

    ``module``'s attributes are read after ``holder``'s keys (a pickled checkpoint dict around
    a model that carries ``class_to_idx`` itself). ``keys``: the names to look for.
    """
    for key, value, place in _candidates(holder, module, keys):
        names = as_names(value)
        if names is None:
            continue
        outputs = count()
        what = f"{where}'s '{place}{key}'"
        fits = outputs is None or len(names) == outputs or (outputs == 1 and len(names) == 2)
        if not fits or len(set(names)) != len(names):
            why = "names repeat" if fits else f"the model has {outputs} outputs"
            warnings.warn(
                f"{what} holds {len(names)} class names, but {why}: not used (give the "
                "classes in output order with --classes FILE)",
                NetlensWarning,
                stacklevel=3,
            )
            return None
        return ClassNames(names, {}, what)
    return None


def _candidates(
    holder: Any, module: nn.Module | None, keys: Sequence[str]
) -> list[tuple[str, Any, str]]:
    """(key, value, where it sits) for each place class names may be, in order of trust: the
    holder's keys, then the mappings nested in it, then ``module``'s attributes likewise."""
    places: list[Mapping[str, Any]] = []
    if isinstance(holder, Mapping):
        places.append(holder)
    elif isinstance(holder, nn.Module):
        module = holder
    if module is not None:
        places.append(vars(module))
    found: list[tuple[str, Any, str]] = []
    for place in places:
        found += [(k, place[k], "") for k in keys if k in place]
        for outer in NESTED:
            inner = place.get(outer)
            if isinstance(inner, Mapping):
                found += [(k, inner[k], f"{outer}.") for k in keys if k in inner]
    return found


def as_names(value: Any) -> list[str] | None:
    """Names in index order from ``{name: index}``, ``{index: name}`` or a list of names (see
    :func:`netlens.data.labels.names_by_index`); None for anything else (a count, tensors of
    training labels, indices that skip or repeat, names that are not strings)."""
    from ..data.labels import names_by_index

    if type(value).__name__ == "ndarray" and value.ndim == 1:  # np.array(["cat", "dog"])
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value] if value and all(isinstance(v, str) for v in value) else None
    if not isinstance(value, Mapping) or not value:
        return None
    if not all(isinstance(k, str) for k in value) and not all(
        isinstance(v, str) for v in value.values()
    ):
        return None  # neither side holds the names
    try:
        return names_by_index(value)
    except DataError:
        return None
