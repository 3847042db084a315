"""Where the images are in a layer's output, for per-element statistics over the data
(``ablate --mode mean``'s means, ``stats``' dead units).

Most layers put the images first (N×C×H×W, N×L×C). Others do not: sequence-first token layers
(``nn.MultiheadAttention``'s default, OpenAI CLIP and open_clip blocks) return L×N×C, and Swin's
window attention returns (N·windows)×T×C, images outer. A unit's per-element mean must average
over the images only, keeping every token, window and channel apart: averaged over the first
axis, a sequence-first layer's "mean" would be each image's mean over its tokens (a different
replacement for every batch size).

:func:`image_axes` finds the axis by running the model on one image and on two: the one axis
whose size doubles holds the images, ``groups`` of them per image (1 for tokens, the window
count for Swin). Two distinct images also show that, with groups, the images are the outer
factor (the first ``groups`` entries belong to the first image).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import AnalyzerError
from .fresh_input import fresh

__all__ = ["ImageAxis", "image_axes"]


@dataclass(frozen=True)
class ImageAxis:
    """The images are on ``axis``, each taking ``groups`` consecutive entries of it.

    One image's share of an output (its *element shape*) is the output's shape without the
    images: the first axis dropped in the usual case (images first, one entry each), else
    ``groups`` kept in place of the axis.
    """

    axis: int = 0
    groups: int = 1

    @property
    def first(self) -> bool:
        return (self.axis, self.groups) == (0, 1)

    def element_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """One image's share of an output of ``shape``, or None when ``shape`` cannot hold
        whole images on the axis."""
        k, g = self.axis, self.groups
        if len(shape) <= k or shape[k] % g:
            return None
        return shape[1:] if self.first else (*shape[:k], g, *shape[k + 1 :])

    def images(self, shape: tuple[int, ...]) -> int:
        return shape[self.axis] // self.groups

    def split(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` with the images on an axis of their own, at ``axis``."""
        return out.unflatten(self.axis, (self.images(out.shape), self.groups))

    def total(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` summed over its images (an element shape)."""
        return out.sum(0) if self.first else self.split(out).sum(self.axis)

    def spread(self, per_element: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``per_element`` (an element shape) repeated for every image of ``shape``, in fresh
        memory."""
        if self.first:
            return per_element.expand(shape).clone()
        k = self.axis
        wide = per_element.unsqueeze(k).expand(
            *shape[:k], self.images(shape), *per_element.shape[k:]
        )
        return wide.reshape(shape)


def _first_tensor(out: Any) -> Any:
    """A tuple's or list's first element when it is a tensor (what is measured), else ``out``."""
    starts = isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor)
    return out[0] if starts else out


def _call_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, list[Any]]:
    """Each unit's outputs (first tensor of a tuple), one per call, from one forward on ``x``."""
    outs: dict[str, list[Any]] = {n: [] for n in names}
    with ExitStack() as stack, torch.no_grad():
        for n in names:
            hook = lambda m, i, o, n=n: outs[n].append(_first_tensor(o))  # noqa: E731
            handle = model.get_submodule(n).register_forward_hook(hook)
            stack.callback(handle.remove)
        model(fresh(x))
    return outs


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = (t.dequantize() if t.is_quantized else t for t in (a, b))
    a, b = a.detach().double(), b.detach().double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-6)


def _axis(name: str, one: Any, two: Any, remedy: str) -> ImageAxis:
    if not isinstance(one, torch.Tensor) or not isinstance(two, torch.Tensor):
        return ImageAxis()  # not a tensor: its statistics refuse it with their own message
    s1, s2 = tuple(one.shape), tuple(two.shape)
    grown = [k for k in range(min(len(s1), len(s2))) if s1[k] != s2[k]]
    if len(s1) == len(s2) and not grown:
        return ImageAxis()  # the same for any batch: one value, whatever the images
    if len(s1) == len(s2) and len(grown) == 1 and s2[grown[0]] == 2 * s1[grown[0]]:
        return ImageAxis(grown[0], s1[grown[0]])
    raise AnalyzerError(
        f"'{name}' returns {'×'.join(map(str, s1))} for one image and "
        f"{'×'.join(map(str, s2))} for two, so its output has no one place for each image and "
        f"no per-image statistics; {remedy}"
    )


def image_axes(
    model: nn.Module, x: torch.Tensor, names: list[str], remedy: str = "use --mode zero for it"
) -> dict[str, list[ImageAxis]]:
    """Each unit's :class:`ImageAxis`, one per call in a forward pass, from forwards on the
    first image of ``x`` and on its first two (the first image twice when ``x`` has one).
    A layer whose output has no one place for each image is refused in one line ending in
    ``remedy`` (what to do instead)."""
    pair = x[:2] if x.shape[0] >= 2 else torch.cat([x[:1], x[:1]])
    ones, twos = _call_outputs(model, x[:1], names), _call_outputs(model, pair, names)
    axes: dict[str, list[ImageAxis]] = {}
    for n in names:
        axes[n] = [_axis(n, a, b, remedy) for a, b in zip(ones[n], twos[n], strict=False)]
        for ax, a, b in zip(axes[n], ones[n], twos[n], strict=False):
            if ax.groups > 1 and x.shape[0] >= 2 and not _close(ax.split(b).select(ax.axis, 0), a):
                raise AnalyzerError(
                    f"'{n}' returns {ax.groups} entries per image on axis {ax.axis}, but not "
                    f"each image's together, so it has no per-image statistics; {remedy}"
                )
    return axes
