"""Targets on a dense regression output (a depth or density map, ``task="regression"``):
the raw channel summed over the whole map or over a mask, a value rather than a class's
probability (:func:`netlens.targets.resolve_targets` builds them here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import TargetError

if TYPE_CHECKING:
    from .lens import Lens
    from .targets import Target

__all__ = ["value_region"]


def value_region(items: list[Any], output: torch.Tensor, lens: Lens) -> Target:
    """A dense regression (depth per pixel, ``task="regression"``): ``output:K`` (or ``K``, a
    channel's index or name) is channel K summed over the whole map, ``region:K@mask.png``
    over the mask; it has no predicted region, so ``region:K`` without a mask is refused in
    one line."""
    from .targets import RegionTarget, _in_range, _mask_file

    classes, masks = [], []
    for item in items:
        text = str(item).strip()
        prefixed = text.lower().startswith(("region:", "output:"))
        name, _, mask_file = (text.split(":", 1)[1] if prefixed else text).partition("@")
        name = name.strip() or ("0" if output.shape[1] == 1 else name)  # the one channel
        if text.lower().startswith("region:") and not mask_file:
            raise TargetError(
                f"target '{text}': a regression's map has no predicted region; give one as a "
                f"mask, region:{name or 0}@mask.png, or explain the whole map with output:K"
            )
        c = _in_range(int(name), output.shape[1]) if name.isdigit() else None
        classes.append(lens.class_index(name, output.shape[1]) if c is None else c)
        whole = torch.ones(output.shape[-2:], dtype=torch.bool)
        masks.append(_mask_file(mask_file, output.shape[-2:]) if mask_file else whole)
    return RegionTarget(torch.tensor(classes), torch.stack(masks))
