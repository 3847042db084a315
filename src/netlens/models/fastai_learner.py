"""fastai Learners saved with ``learn.export()``: the model, its classes, its own input pipeline.

``learn.export("export.pkl")`` pickles the whole Learner (fastai's ``load_learner`` reads it
with ``torch.load(weights_only=False)``, so it needs ``--trust`` and fastai installed). What
netlens takes from it:

- the model: ``learn.model``;
- the class names in output order: ``learn.dls.vocab`` (fastai numbers the classes by its
  sorted vocabulary; folder names read again would not recover that order for ``1, 10, 2``);
- the task, from the loss the model was trained with: ``BCEWithLogitsLossFlat`` (multi-label)
  reads its outputs through independent sigmoids, not a softmax;
- the input: what ``learn.predict`` does to an image, fastai's own validation pipeline
  (``dls.test_dl``): item transforms such as ``Resize(460)``, batch transforms such as
  ``aug_transforms(size=224)``'s validation crop, ``IntToFloatTensor`` and ``Normalize``. It is
  run by fastai's code, as timm's transforms run timm models: fastai's ``Resize`` crops before it
  resizes and its batch transforms resample on a grid, so a translation would move pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelLoadError
from ..preprocess import Preprocess
from .load import LoadedModel

__all__ = ["LearnerInput", "is_learner", "learner_parts"]

# fastai's losses → netlens tasks (the loss says how the outputs were read in training)
_TASKS = {
    "CrossEntropyLossFlat": "multiclass",
    "LabelSmoothingCrossEntropyFlat": "multiclass",
    "LabelSmoothingCrossEntropy": "multiclass",
    "FocalLossFlat": "multiclass",
    "CrossEntropyLoss": "multiclass",
    "BCEWithLogitsLossFlat": "multilabel",
    "BCEWithLogitsLoss": "multilabel",
    "MSELossFlat": "regression",
    "L1LossFlat": "regression",
    "MSELoss": "regression",
    "L1Loss": "regression",
}


def is_learner(obj: Any) -> bool:
    """True for a fastai ``Learner`` (a model and its DataLoaders)."""
    return (
        type(obj).__module__.split(".")[0] == "fastai"
        and isinstance(getattr(obj, "model", None), nn.Module)
        and hasattr(obj, "dls")
    )


class LearnerInput:
    """An image → the tensor ``learn.predict`` would give the model: fastai's validation
    pipeline of the Learner's DataLoaders (``dls.test_dl``), on the CPU."""

    def __init__(self, dls: Any) -> None:
        self.dls = dls

    def __call__(self, image: Any) -> torch.Tensor:
        batch = self.dls.test_dl([image], num_workers=0).one_batch()
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return x[0].as_subclass(torch.Tensor).detach().cpu().float()


def learner_parts(learn: Any, where: str, *, own: bool) -> LoadedModel:
    """The model, preprocessing, class names, task and card of a Learner.

    ``own``: the Learner was unpickled by netlens (its DataLoaders are moved to the CPU, as
    ``load_learner`` does); a user's Learner is left as it is.
    """
    from .classes import output_count
    from .recorded_classes import recorded_class_names

    dls, model = learn.dls, learn.model
    inputs = getattr(dls, "n_inp", 1)
    if inputs != 1:
        raise ModelLoadError(
            f"{where} is a fastai Learner whose model takes {inputs} inputs; netlens explains "
            "models of one image"
        )
    if own and hasattr(dls, "cpu"):
        dls.cpu()  # as load_learner(cpu=True): the pipeline runs where netlens reads images
    pipeline = LearnerInput(dls)
    try:
        probe = pipeline(_probe_image())
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - fastai's pipeline, on data it was not made for
        raise ModelLoadError(
            f"{where} is a fastai Learner whose input pipeline does not take an image "
            f"({type(exc).__name__}: {exc}); netlens explains image models"
        ) from None
    if probe.dim() != 3:
        raise ModelLoadError(
            f"{where} is a fastai Learner whose input is {tuple(probe.shape)}, not an image"
        )
    c, h, w = probe.shape
    mean, std = _normalisation(dls, c)
    spec = Preprocess(
        size=(int(h), int(w)),
        channels=int(c),
        mean=mean,
        std=std,
        function=pipeline,
        source=f"fastai's validation pipeline of the Learner ({_steps(dls)})",
    )
    vocab = getattr(dls, "vocab", None)
    names = [str(v) for v in vocab] if _listlike(vocab) else []
    classes = None
    if names:
        holder = {"dls.vocab": names}
        classes = recorded_class_names(holder, lambda: output_count(model), where, keys=[*holder])
    loss = type(getattr(learn, "loss_func", None)).__name__
    card = {"arch": type(model).__name__, "saved_by": "fastai", "loss": loss}
    return LoadedModel(model, spec, classes, card, _TASKS.get(loss))


def _probe_image() -> Any:
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))


def _listlike(value: Any) -> bool:
    """A list, or fastai's CategoryMap (an ``L``: list-like, not a list); not a string."""
    return (
        hasattr(value, "__len__")
        and hasattr(value, "__getitem__")
        and not isinstance(value, (str, bytes, dict))
    )


def _normalisation(dls: Any, c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of the pipeline's ``Normalize`` (for drawing its input back as a picture);
    none: pixels in [0, 1]."""
    for tfm in _transforms(getattr(dls, "after_batch", None)):
        if type(tfm).__name__ == "Normalize" and getattr(tfm, "mean", None) is not None:
            mean = torch.as_tensor(tfm.mean).flatten().tolist()
            std = torch.as_tensor(tfm.std).flatten().tolist()
            if len(mean) in (1, c) and len(std) in (1, c):
                return tuple(mean), tuple(std)
    return (0.0,) * c, (1.0,) * c


def _transforms(pipeline: Any) -> list[Any]:
    return list(getattr(pipeline, "fs", None) or [])


def _steps(dls: Any) -> str:
    """The pipeline's transforms, named as fastai names them (``Resize(64, crop)``)."""
    names = []
    for place in ("after_item", "after_batch"):
        for tfm in _transforms(getattr(dls, place, None)):
            name = type(tfm).__name__
            if name == "Resize":
                size = getattr(tfm, "size", None)
                method = getattr(tfm, "method", "")
                shown = "×".join(str(s) for s in size[::-1]) if size is not None else "?"
                name = f"Resize({shown}, {method})"
            names.append(name)
    return ", ".join(names) or "no transforms"
