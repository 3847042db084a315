"""timm's reparameterized (deploy) form: RepVGG, MobileOne and FastViT blocks train as several
branches and are fused into one convolution (``reparam_conv``) by
``timm.utils.reparameterize_model``. Weights saved after it fit only a model fused the same
way, so every place that builds an architecture for weights (``netlens.load`` of a state_dict
or a netlens checkpoint, ``netlens.save``'s check) builds that form when the weights are in it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from torch import nn

from ..errors import ModelLoadError

__all__ = ["DEPLOY_METHODS", "deployed", "has_deploy_form", "in_deploy_form"]

DEPLOY_METHODS = ("fuse", "reparameterize", "switch_to_deploy")  # what timm's function calls


def in_deploy_form(keys: Iterable[str]) -> bool:
    """Whether weights named ``keys`` are a reparameterized model's (``*.reparam_conv.*``)."""
    return any(".reparam_conv." in f".{k}" for k in keys)


def _fusable(module: nn.Module) -> list[str]:
    """The deploy methods timm's ``module`` has (none for modules not timm's)."""
    if not type(module).__module__.startswith("timm."):
        return []
    return [m for m in DEPLOY_METHODS if inspect.ismethod(getattr(module, m, None))]


def has_deploy_form(model: nn.Module) -> bool:
    """Whether ``model`` holds timm modules that fuse into a deploy form."""
    return any(_fusable(m) for m in model.modules())


def deployed(model: nn.Module, deploy: bool = True) -> nn.Module:
    """``model`` fused in place into its deploy form (when ``deploy``), as
    ``timm.utils.reparameterize_model`` does it, but only on timm's own modules: a user's
    decoder with a ``fuse`` convolution or flag is left alone (timm's function would call it).
    A fusion that fails is one line naming the module."""
    if not deploy:
        return model

    def fuse(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            methods = _fusable(child)
            if methods:  # the first, as timm's function picks
                try:
                    fused = getattr(child, methods[0])()
                except Exception as exc:  # noqa: BLE001 - said in one line
                    raise ModelLoadError(
                        f"fusing '{path}' ({type(child).__name__}) into its deploy form failed "
                        f"({type(exc).__name__}: {str(exc)[:120]}); load the weights into the "
                        "model in Python and pass it to netlens.load"
                    ) from exc
                if methods[0] == "fuse":
                    setattr(parent, name, fused)
                    child = fused
            fuse(child, f"{path}.")

    fuse(model, "")
    return model
