"""netlens' own model loaders, registered through the same hook a plugin would use."""

from __future__ import annotations

from . import hookimpl
from .registry import Registry


@hookimpl
def netlens_register_model_loaders(registry: Registry) -> None:
    from ..models import load

    registry.add("netlens-checkpoint", load.load_netlens_checkpoint)
    registry.add("state-dict", load.load_state_dict_file)
    registry.add("pickled-module", load.load_pickled_module)
