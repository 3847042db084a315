"""netlens: open up trained PyTorch image models.

>>> import netlens
>>> lens = netlens.load("model.pt", arch="resnet18")
>>> lens.cam("cat.jpg").show()

The public names are imported lazily, so ``import netlens`` (and ``netlens --help``) does not
import torch.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

__version__ = "0.1.0"


def _import_rich_quietly() -> None:
    """rich, which netlens prints with, draws from Python's ``random`` when first imported
    (``rich.style``'s id counter): imported here with that draw undone, so that no analysis
    moves a user's seeded ``random`` (seed, analyse, train: the same run as without)."""
    state = random.getstate()
    try:
        import rich.style  # noqa: F401
    except ImportError:  # pragma: no cover - rich is a dependency
        pass
    finally:
        random.setstate(state)


_import_rich_quietly()

_LAZY = {
    "load": "netlens.models.load",
    "save": "netlens.models.save",
    "probe": "netlens.probes",
    "Probe": "netlens.probes",
    "Lens": "netlens.lens",
    "Preprocess": "netlens.preprocess",
    "read_image": "netlens.images",
    "resolve_layers": "netlens.layers",
    "LayerCall": "netlens.layer_call",
    "hook_call": "netlens.call_hooks",
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
