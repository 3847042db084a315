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
from .few_images import on_fewest
from .fresh_input import fresh

__all__ = ["ImageAxis", "image_axes"]


@dataclass(frozen=True)
class ImageAxis:
    """The images are on ``axis``, each taking ``groups`` consecutive entries of it; ``axis``
    None: the output holds no images (the same values whatever the batch: a positional table
    ``nn.Embedding(L, C)(arange(L))``, Swin V2's coordinate MLP), one value per pass.

    One image's share of an output (its *element shape*) is the output's shape without the
    images: the first axis dropped in the usual case (images first, one entry each), else
    ``groups`` kept in place of the axis; the whole output when it holds no images.
    """

    axis: int | None = 0
    groups: int = 1

    @property
    def first(self) -> bool:
        return (self.axis, self.groups) == (0, 1)

    def element_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """One image's share of an output of ``shape``, or None when ``shape`` cannot hold
        whole images on the axis."""
        k, g = self.axis, self.groups
        if k is None:
            return shape
        if len(shape) <= k or shape[k] % g:
            return None
        return shape[1:] if self.first else (*shape[:k], g, *shape[k + 1 :])

    def images(self, shape: tuple[int, ...]) -> int:
        return 1 if self.axis is None else shape[self.axis] // self.groups

    def split(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` with the images on an axis of their own, at ``axis``."""
        return out.unflatten(self.axis, (self.images(out.shape), self.groups))

    def total(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` summed over its images (an element shape)."""
        if self.axis is None:
            return out
        return out.sum(0) if self.first else self.split(out).sum(self.axis)

    def spread(self, per_element: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``per_element`` (an element shape) repeated for every image of ``shape``, in fresh
        memory."""
        if self.first or self.axis is None:
            return per_element.expand(shape).clone()
        k = self.axis
        wide = per_element.unsqueeze(k).expand(
            *shape[:k], self.images(shape), *per_element.shape[k:]
        )
        return wide.reshape(shape)


def _call_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, list[Any]]:
    """Each unit's outputs (first tensor of a tuple), one per call, from one forward on ``x``."""
    from .analyzers.ablation.survey import first_tensor  # here: that package imports this one

    outs: dict[str, list[Any]] = {n: [] for n in names}
    with ExitStack() as stack, torch.no_grad():
        for n in names:
            hook = lambda m, i, o, n=n: outs[n].append(first_tensor(o))  # noqa: E731
            handle = model.get_submodule(n).register_forward_hook(hook)
            stack.callback(handle.remove)
        model(fresh(x))
    return outs


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = (t.dequantize() if t.is_quantized else t for t in (a, b))
    a, b = a.detach().double(), b.detach().double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-6)


def _axis(name: str, one: Any, two: Any, remedy: str, base: int = 1) -> ImageAxis:
    """The axis from a call's outputs for ``base`` images and for twice as many."""
    if not isinstance(one, torch.Tensor) or not isinstance(two, torch.Tensor):
        return ImageAxis()  # not a tensor: its statistics refuse it with their own message
    s1, s2 = tuple(one.shape), tuple(two.shape)
    grown = [k for k in range(min(len(s1), len(s2))) if s1[k] != s2[k]]
    if len(s1) == len(s2) and not grown:  # the same for any batch: holds no images
        return ImageAxis() if s1[:1] == (1,) else ImageAxis(None)  # (1, L, C): one share
    k = grown[0] if len(grown) == 1 else None
    if len(s1) == len(s2) and k is not None and s2[k] == 2 * s1[k] and s1[k] % base == 0:
        return ImageAxis(k, s1[k] // base)
    raise AnalyzerError(
        f"'{name}' returns {'×'.join(map(str, s1))} for {base} image(s) and "
        f"{'×'.join(map(str, s2))} for {2 * base}, so its output has no one place for each "
        f"image and no per-image statistics; {remedy}"
    )


def _first(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` images of ``x``, its images repeated when it has fewer."""
    times = -(-n // x.shape[0])
    return x.repeat(times, *([1] * (x.dim() - 1)))[:n] if times > 1 else x[:n]


def image_axes(
    model: nn.Module, x: torch.Tensor, names: list[str], remedy: str = "use --mode zero for it"
) -> dict[str, list[ImageAxis]]:
    """Each unit's :class:`ImageAxis`, one per call in a forward pass, from forwards on the
    first image of ``x`` and on its first two (the first image twice when ``x`` has one); on
    two and four for a model that cannot run on one image (``.squeeze()`` before a
    ``BatchNorm1d``). A layer whose output has no one place for each image is refused in one
    line ending in ``remedy`` (what to do instead)."""
    base, ones = on_fewest(lambda few: (len(few), _call_outputs(model, few, names)), x)
    twos = _call_outputs(model, _first(x, 2 * base), names)
    axes: dict[str, list[ImageAxis]] = {}
    for n in names:
        if len(ones[n]) != len(twos[n]):
            raise AnalyzerError(
                f"'{n}' runs {len(ones[n])} time(s) for {base} image(s) and {len(twos[n])} for "
                f"{2 * base} (a forward that loops over the images?), so its calls are not one "
                f"place each; {remedy}"
            )
        axes[n] = [_axis(n, a, b, remedy, base) for a, b in zip(ones[n], twos[n], strict=True)]
        for ax, a, b in zip(axes[n], ones[n], twos[n], strict=True):
            if ax.axis is None or ax.groups == 1 or x.shape[0] < 2:
                continue  # nothing to order (identical images would pass any order)
            if not _close(ax.split(b).narrow(ax.axis, 0, base), ax.split(a)):
                raise AnalyzerError(
                    f"'{n}' returns {ax.groups} entries per image on axis {ax.axis}, but not "
                    f"each image's together, so it has no per-image statistics; {remedy}"
                )
    return axes
