"""netlens: open up trained PyTorch image models.

>>> import netlens
>>> lens = netlens.load("model.pt", arch="resnet18")
>>> lens.cam("cat.jpg").show()

The public names are imported lazily, so ``import netlens`` (and ``netlens --help``) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "netlens.models.load",
    "save": "netlens.models.save",
    "probe": "netlens.probes",
    "Probe": "netlens.probes",
    "Lens": "netlens.lens",
    "Preprocess": "netlens.preprocess",
    "read_image": "netlens.images",
    "resolve_layers": "netlens.layers",
    "layer_table": "netlens.layers",
    "PluginHost": "netlens.plugins.manager",
    "Result": "netlens.analyzers.base",
    "Analyzer": "netlens.analyzers.base",
    "NetlensError": "netlens.errors",
    "train": "netlens.train",
    "cam": "netlens.analyzers.cam",
    "CamResult": "netlens.analyzers.cam_result",
    "CamMethod": "netlens.analyzers.cam_base",
    "ablate": "netlens.analyzers.ablation",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netlens' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
