"""Training: ``netlens.train(...)`` / ``netlens train``, metrics, transfer learning, recipes.

``netlens.train`` is both this package and the function: the package is made callable, so
``netlens.train(arch, data, ...)`` works whichever was imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .config import TrainConfig
from .recipes import RECIPES, Recipe, get_recipe
from .trainer import TrainResult, run, train

__all__ = ["RECIPES", "Recipe", "TrainConfig", "TrainResult", "get_recipe", "run", "train"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
