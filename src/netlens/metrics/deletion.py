"""Deletion and insertion (Petsiuk et al. 2018, RISE), with a random-order baseline.

Deletion removes pixels from the image in heatmap order (most relevant first), in ``steps``
equal steps, and records the target-class probability after each step; a faithful heatmap makes
it drop fast (low AUC is good). Insertion starts from a blurred copy and reveals pixels in the
same order (high AUC is good). Removed pixels take ``fill``: ``"zero"`` (a zero model input, as
in RISE: the mean colour of inputs normalised by their data's mean, but black for a model that
takes pixels as they are, ``--mean 0 --std 1`` or a 0..255 one) or ``"blur"``. For a model whose
first layer normalises its input itself (``Sequential(Normalize(mean, std), net)``: netlens
feeds it pixels) ``"zero"`` is that layer's mean, the colour a zero input is after it, so where
the normalisation lives does not change the score.
The blur is torchvision's ``gaussian_blur`` (11 px kernel, sigma 5, reflect padding at the
borders), not RISE's own blur kernel.

The step images of all images go through the model together, in full batches of
``batch_size`` made as they are needed, so the cost is ``N·(steps+1)`` forward-passed images per
curve (twice with the random baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NetlensError
from ..parallel import one_thread_per_op
from .perturb import auc, image_ranks, row_probs, seed_option, to_tensor

__all__ = ["Deletion", "Insertion", "blurred", "perturbation_curves"]

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def blurred(x: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """A Gaussian-blurred copy of an N×C×H×W batch (kernel shrunk to fit small images)."""
    k = min(kernel, (min(x.shape[-2:]) - 1) | 1)
    return gaussian_blur(x, k, sigma)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` (same kernel, reflect padding), without importing
    torchvision: its import pulls in torch._dynamo, over a second of every ``evaluate``."""
    half = (kernel - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, kernel) / sigma) ** 2)
    k1 = (pdf / pdf.sum()).to(device=x.device, dtype=x.dtype)
    weight = torch.outer(k1, k1).expand(x.shape[1], 1, kernel, kernel)
    padded = F.pad(x, [kernel // 2] * 4, mode="reflect")
    return F.conv2d(padded, weight, groups=x.shape[1])


def perturbation_curves(
    model: nn.Module,
    x: torch.Tensor,
    heatmaps: Any,
    targets: Any,
    *,
    mode: str = "deletion",
    steps: int = 32,
    batch_size: int = 64,
    fill: str = "zero",
    order: str = "heatmap",
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """N×(steps+1) target probabilities as pixels are deleted (or inserted) step by step.

    Args:
        model: the classifier (run in eval mode, without gradients; never modified).
        x: preprocessed N×C×H×W inputs.
        heatmaps: N×H×W relevance at input resolution (higher = more relevant).
        targets: N class indices whose probability is tracked.
        mode: ``"deletion"`` or ``"insertion"``.
        steps: number of steps from the full image to none of it (or back).
        batch_size: images per forward pass.
        fill: what deleted pixels become: ``"zero"`` or ``"blur"`` (deletion only).
        order: ``"heatmap"`` or ``"random"`` (the baseline order; heatmaps unused).
        seed: for tie-breaking and the random order: image ``i`` uses ``seed + i``, or
            ``seed[i]`` when one seed per image is given.
    """
    if mode not in ("deletion", "insertion"):
        raise NetlensError(f"mode must be 'deletion' or 'insertion', not '{mode}'")
    h = heatmaps.detach().cpu().numpy() if isinstance(heatmaps, torch.Tensor) else heatmaps
    h = np.asarray(h)
    if h.shape != (x.shape[0], *x.shape[-2:]):
        raise NetlensError(f"heatmaps {h.shape} do not match the inputs {tuple(x.shape)}")
    targets = np.asarray(to_tensor(targets, x).cpu()).astype(np.int64).ravel()
    hw = x.shape[-2] * x.shape[-1]
    counts = torch.tensor([int(round(c)) for c in np.linspace(0, hw, steps + 1)])
    soft = blurred(x)
    if mode == "deletion":
        start, end = x, (soft if fill == "blur" else mean_colour(model, x))
    else:
        start, end = soft, x
    ranks = torch.as_tensor(image_ranks(h, order, seed), device=x.device)
    counts = counts.to(x.device)
    k = len(counts)

    def rows(a: int, b: int) -> torch.Tensor:
        j = torch.arange(a, b, device=x.device)
        i = j // k
        removed = ranks[i] < counts[j % k].view(-1, 1, 1)
        return torch.where(removed.unsqueeze(1), end[i], start[i])

    with one_thread_per_op() as workers:
        probs = row_probs(model, rows, np.repeat(targets, k), batch_size, workers)
    return probs.reshape(len(x), k)


def mean_colour(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mean colour as the model takes it, shaped like ``x``: 0 for normalised inputs, the
    mean of a first layer that normalises the model's input itself."""
    from ..models.input_norm import input_normalizer

    norm = input_normalizer(model)
    if norm is None or len(norm.mean) not in (1, x.shape[1]):
        return torch.zeros_like(x)
    mean = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return mean.expand_as(x).clone()


@dataclass(frozen=True)
class _Perturbation:
    mode: ClassVar[str] = "deletion"

    def cost(
        self, n_images: int, steps: int = 32, random_baseline: bool = True, **opts: Any
    ) -> int:
        """Images forward-passed: ``N·(steps+1)``, doubled for the random baseline."""
        return n_images * (int(steps) + 1) * (2 if random_baseline else 1)

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        heatmaps: Any,
        targets: Any,
        masks: Any = None,
        steps: int = 32,
        batch_size: int = 64,
        random_baseline: bool = True,
        fill: str = "zero",
        seed: int = 0,
        image_seeds: Sequence[int] | None = None,
        **opts: Any,
    ) -> dict[str, np.ndarray]:
        kw = dict(mode=self.mode, steps=int(steps), batch_size=int(batch_size), fill=fill)
        kw["seed"] = seed_option(seed, image_seeds)
        curve = perturbation_curves(model, x, heatmaps, targets, **kw)
        out = {"score": auc(curve), "curve": curve}
        if random_baseline:
            rnd = perturbation_curves(model, x, heatmaps, targets, order="random", **kw)
            out |= {"baseline": auc(rnd), "curve_baseline": rnd}
        return out


@dataclass(frozen=True)
class Deletion(_Perturbation):
    """Deletion AUC (RISE): probability as top pixels are removed; lower is better."""

    name: ClassVar[str] = "deletion"
    mode: ClassVar[str] = "deletion"
    needs_masks: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = False


@dataclass(frozen=True)
class Insertion(_Perturbation):
    """Insertion AUC (RISE): probability as top pixels are revealed on a blur; higher is better."""

    name: ClassVar[str] = "insertion"
    mode: ClassVar[str] = "insertion"
    needs_masks: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
