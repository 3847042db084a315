"""Weights saved by a model's original repository, renamed as timm names them.

timm ports most architectures from their authors' code and keeps, beside each, the function it
uses to read the authors' checkpoints (``checkpoint_filter_fn``: facebookresearch/ConvNeXt's
``downsample_layers.0.0`` → ``stem.0``, torchvision's VGG ``classifier.0`` → ``pre_logits.fc1``,
...). A file saved by such a repository (a fine-tune with the authors' training code) is read
with that function when its names do not fit timm's model.

Those functions also adapt weights when timm loads them into another configuration: they
resample position embeddings, add zero biases, drop heads. Any such change would make the
model explained differently from the one trained, so a conversion is used only when every
tensor it returns is one of the file's own (the same memory: renamed, reshaped or transposed,
never recomputed) and the result names all of the model's weights.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn

__all__ = ["timm_renamed"]

FILTER_NAMES = ("checkpoint_filter_fn", "_filter_fn", "filter_fn", "_checkpoint_filter_fn")


def timm_renamed(
    state: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], str] | None:
    """``state`` renamed by the filter of ``model``'s timm module, and that filter's name;
    None when ``model`` is not timm's, its names already fit, it has no filter, or the filter
    changes a weight rather than renames it."""
    module = sys.modules.get(type(model).__module__)
    if module is None or not type(model).__module__.startswith("timm.models."):
        return None
    want = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if want <= state.keys():
        return None
    found = [getattr(module, n, None) for n in FILTER_NAMES]
    fn = next((f for f in found if callable(f)), None)
    if fn is None:
        return None
    try:
        takes_model = len(inspect.signature(fn).parameters) >= 2
        out = fn(dict(state), model) if takes_model else fn(dict(state))
    except Exception:  # noqa: BLE001 - not a checkpoint this filter knows
        return None
    if not isinstance(out, dict) or not want <= out.keys():
        return None
    held = {_storage(t) for t in state.values() if isinstance(t, torch.Tensor)}
    if not all(isinstance(t, torch.Tensor) and _storage(t) in held for t in out.values()):
        return None  # a weight made or recomputed (resampled, zero-filled): not the file's
    return out, f"{type(model).__module__}.{fn.__name__}"


def _storage(t: torch.Tensor) -> Any:
    return t.untyped_storage().data_ptr()
