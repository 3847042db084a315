"""The model's own preprocessing.

:class:`Preprocess` is the spec (size, channels, resize/crop, interpolation, mean/std, and where
it came from); :func:`preprocess_for` finds it for a model: timm's data config applied by timm's
own transform, the transforms of a torchvision weights enum, a netlens checkpoint's recorded spec,
the model's ``input_size``. See ``docs/preprocessing.md``.
"""

from .from_model import model_channels, model_input_size, preprocess_for, with_overrides
from .spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    Preprocess,
    SizeFromFirstImage,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "Preprocess",
    "SizeFromFirstImage",
    "model_channels",
    "model_input_size",
    "preprocess_for",
    "with_overrides",
]
