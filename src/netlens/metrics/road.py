"""ROAD: RemOve And Debias (Rong et al. 2022) with noisy linear imputation.

Pixels are removed in heatmap order, most relevant first (MoRF: the probability should fall,
lower is better) or least relevant first (LeRF: it should hold, higher is better), at several
fractions (10 %, 20 %, ... 90 % by default). Removed pixels are not set to a constant, which
leaks the mask's shape to the model, but imputed: each one is the weighted mean of its eight
neighbours (weights 1/6 for edge neighbours, 1/12 for corners, as in the authors' code), which
couples all removed pixels into one sparse, symmetric positive-definite linear system, solved
for all images and fractions of a call at once (:mod:`netlens.metrics.imputation`); Gaussian
noise (std ``noise``, 0.01 by default) is then added to the imputed pixels, in normalised input
units, as ROAD's authors and pytorch-grad-cam add it to normalised tensors: for a model that
normalises its own input (``Sequential(Normalize(mean, std), net)``, which netlens feeds
pixels) the noise is scaled by that layer's ``std``, so where the normalisation lives does not
change the score (the imputation itself commutes with it). The imputed images of all images and
fractions go through the model together, in full batches. The score is the mean of the target's
softmax probability over the fractions; pytorch-grad-cam's ROAD reports its change from the
intact image's probability, quantus' a top-1 accuracy (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import NetlensError
from ..parallel import one_thread_per_op
from .imputation import solve_imputation
from .perturb import image_ranks, image_seeds, row_probs, seed_option, to_tensor

__all__ = [
    "NEIGHBOUR_WEIGHTS",
    "RoadLerf",
    "RoadMorf",
    "impute_linear",
    "noise_scale",
    "road_curves",
]

NEIGHBOUR_WEIGHTS = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]]
)
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def impute_linear(
    x: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    seed: int = 0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Fill ``removed`` pixels of ``x`` by noisy linear imputation.

    Solves ``deg_i·v_i − Σ_{j removed} w_ij·v_j = Σ_{j kept} w_ij·x_j`` for every removed pixel
    ``i`` (``deg_i``: the summed weights of its in-image neighbours), then adds Gaussian noise
    of std ``noise`` (drawn with ``seed``, over the whole tensor) to the removed pixels.

    Args:
        x: N×C×H×W (or C×H×W) images.
        removed: N×H×W (or H×W) bool mask of pixels to impute, shared by the channels.
        noise: std of the Gaussian noise added to imputed pixels (0 for the plain solution).
        seed: seed of that noise.
        tol: solver tolerance, on the preconditioned residual: the imputed values are within
            about ``10·tol`` of the exact solution (6e-5 to 9e-5 measured at the default 1e-5,
            moving ROAD's probabilities by 3e-6 at most; float32 input: about 1e-5 at best).
    """
    single = x.dim() == 3
    xb = x.unsqueeze(0) if single else x
    m = removed.unsqueeze(0) if removed.dim() == 2 else removed
    m = m.expand(xb.shape[0], *m.shape[-2:])
    v = _solve(xb, m, tol)
    if noise > 0:
        v = v + m[:, None].to(v.dtype) * _noise(v.shape, noise, seed).to(v.device, v.dtype)
    return v[0] if single else v


def _solve(x: torch.Tensor, removed: torch.Tensor, tol: float) -> torch.Tensor:
    out = solve_imputation(_array(x), removed.detach().cpu().numpy(), tol=tol)
    return torch.from_numpy(out).to(x.device, x.dtype)


def _array(x: torch.Tensor) -> np.ndarray:
    """``x`` as a float32/float64 numpy array (half precision is solved in float32)."""
    x = x.detach().cpu()
    return (x if x.dtype in (torch.float32, torch.float64) else x.float()).numpy()


def _noise(shape: torch.Size, std: float, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return std * torch.randn(shape, generator=gen)


def road_curves(
    model: nn.Module,
    x: torch.Tensor,
    heatmaps: Any,
    targets: Any,
    *,
    order: str = "morf",
    fractions: tuple[float, ...] = FRACTIONS,
    batch_size: int = 64,
    noise: float = 0.01,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """N×len(fractions) target probabilities after removing and imputing each fraction.

    ``order``: ``"morf"`` (most relevant removed first), ``"lerf"`` (least relevant first) or
    ``"random"`` (the baseline; heatmaps unused). Image ``i``'s tie-breaking, random order and
    noise use seed ``seed + i`` (``seed[i]`` when one seed per image is given). ``noise`` is
    the std in normalised input units (times the std of a normalising first layer of the
    model's: see the module doc).
    """
    if order not in ("morf", "lerf", "random"):
        raise NetlensError(f"ROAD order must be morf, lerf or random, not '{order}'")
    h = np.asarray(heatmaps.detach().cpu() if isinstance(heatmaps, torch.Tensor) else heatmaps)
    tg = np.asarray(to_tensor(targets, x).cpu()).astype(np.int64).ravel()
    n, k = x.shape[0], len(fractions)
    hw = x.shape[-2] * x.shape[-1]
    counts = np.array([round(f * hw) for f in fractions]).reshape(1, k, 1, 1)
    ranks = image_ranks(h, "random" if order == "random" else "heatmap", seed)[:, None]
    removed = ranks < counts if order != "lerf" else ranks >= hw - counts  # N×K×H×W
    with one_thread_per_op() as workers:
        copies = _array(x)[:, None].repeat(k, axis=1)
        solved = solve_imputation(
            copies.reshape(n * k, *x.shape[1:]),
            removed.reshape(n * k, *x.shape[-2:]),
            workers=workers,
        )
        imputed = torch.from_numpy(solved).reshape(n, k, *x.shape[1:])
        if noise > 0:
            mask = torch.from_numpy(removed[:, :, None]).to(imputed.dtype)
            scale = noise_scale(model, x.shape[1])
            for i, s in enumerate(image_seeds(seed, n)):  # as impute_linear(x[i] ×K, seed=s)
                drawn = _noise(imputed.shape[1:], noise, s)
                imputed[i] += mask[i] * (drawn if scale is None else drawn * scale)
        flat = imputed.reshape(n * k, *x.shape[1:]).to(x.device, x.dtype)
        probs = row_probs(model, lambda a, b: flat[a:b], np.repeat(tg, k), batch_size, workers)
    return probs.reshape(n, k)


def noise_scale(model: nn.Module, channels: int) -> torch.Tensor | None:
    """1×C×1×1 per-channel factor that brings noise in normalised units to the model's input
    units: the std of a first layer that normalises the model's input itself (found as
    :func:`~netlens.metrics.deletion.mean_colour` finds its mean); None: the inputs are the
    normalised ones already (the preprocessing normalised them)."""
    from ..models.input_norm import input_normalizer

    norm = input_normalizer(model)
    if norm is None or len(norm.std) not in (1, channels):
        return None
    return torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)


@dataclass(frozen=True)
class _Road:
    order: ClassVar[str] = "morf"
    needs_masks: ClassVar[bool] = False

    def cost(
        self,
        n_images: int,
        fractions: tuple[float, ...] = FRACTIONS,
        random_baseline: bool = True,
        shared: dict | None = None,
        **opts: Any,
    ) -> int:
        """Images forward-passed: ``N·len(fractions)``, doubled for the random baseline.

        ``shared`` (``evaluate``'s plan: one dict for the run, as its calls share one per
        batch): the random baseline, computed once for all methods and both ROAD metrics, is
        charged there, once, and left out of the count returned (per method)."""
        n = n_images * len(fractions)
        if not random_baseline:
            return n
        if not isinstance(shared, dict):
            return 2 * n
        shared.setdefault(("road-random", tuple(float(f) for f in fractions)), n)
        return n

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        heatmaps: Any,
        targets: Any,
        masks: Any = None,
        fractions: tuple[float, ...] = FRACTIONS,
        batch_size: int = 64,
        noise: float = 0.01,
        random_baseline: bool = True,
        seed: int = 0,
        image_seeds: Sequence[int] | None = None,
        **opts: Any,
    ) -> dict[str, np.ndarray]:
        fr = tuple(float(f) for f in fractions)
        kw = dict(fractions=fr, batch_size=int(batch_size), noise=float(noise))
        kw["seed"] = seed_option(seed, image_seeds)
        curve = road_curves(model, x, heatmaps, targets, order=self.order, **kw)
        out = {"score": curve.mean(axis=1), "curve": curve, "curve_x": np.asarray(fr)}
        if random_baseline:
            rnd = _random_baseline(model, x, heatmaps, targets, opts.get("shared"), kw)
            out |= {"baseline": rnd.mean(axis=1), "curve_baseline": rnd}
        return out


def _random_baseline(
    model: nn.Module, x: torch.Tensor, heatmaps: Any, targets: Any, shared: Any, kw: dict
) -> np.ndarray:
    """The random-order curves, computed once per batch for MoRF and LeRF alike.

    ``shared`` is a dict that ``evaluate`` hands to every metric of one batch of images
    (same model, images and targets), so the second ROAD metric reuses the first's baseline.
    """
    key = ("road-random", id(model), kw["fractions"], kw["noise"], str(kw["seed"]))
    if isinstance(shared, dict) and key in shared:
        return shared[key]
    rnd = road_curves(model, x, heatmaps, targets, order="random", **kw)
    if isinstance(shared, dict):
        shared[key] = rnd
    return rnd


@dataclass(frozen=True)
class RoadMorf(_Road):
    """ROAD, most relevant first: mean probability over removal fractions; lower is better."""

    name: ClassVar[str] = "road-morf"
    order: ClassVar[str] = "morf"
    higher_is_better: ClassVar[bool] = False


@dataclass(frozen=True)
class RoadLerf(_Road):
    """ROAD, least relevant first: mean probability over removal fractions; higher is better."""

    name: ClassVar[str] = "road-lerf"
    order: ClassVar[str] = "lerf"
    higher_is_better: ClassVar[bool] = True
