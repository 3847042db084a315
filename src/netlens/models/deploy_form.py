"""timm's reparameterized (deploy) form: RepVGG, MobileOne and FastViT blocks train as several
branches and are fused into one convolution (``reparam_conv``) by
``timm.utils.reparameterize_model``. Weights saved after it fit only a model fused the same
way, so every place that builds an architecture for weights (``netlens.load`` of a state_dict
or a netlens checkpoint, ``netlens.save``'s check) builds that form when the weights are in it.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["DEPLOY_METHODS", "deployed", "in_deploy_form"]

DEPLOY_METHODS = ("fuse", "reparameterize", "switch_to_deploy")  # what timm's function calls


def in_deploy_form(keys: Iterable[str]) -> bool:
    """Whether weights named ``keys`` are a reparameterized model's (``*.reparam_conv.*``)."""
    return any(".reparam_conv." in f".{k}" for k in keys)


def deployed(model: nn.Module, deploy: bool = True) -> nn.Module:
    """``model`` fused in place into its deploy form (when ``deploy``), as timm does it."""
    if deploy:
        from timm.utils import reparameterize_model

        reparameterize_model(model, inplace=True)
    return model
