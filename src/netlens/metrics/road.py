"""ROAD: RemOve And Debias (Rong et al. 2022) with noisy linear imputation.

Pixels are removed in heatmap order, most relevant first (MoRF: the probability should fall,
lower is better) or least relevant first (LeRF: it should hold, higher is better), at several
fractions (10 %, 20 %, ... 90 % by default). Removed pixels are not set to a constant, which
leaks the mask's shape to the model, but imputed: each one is the weighted mean of its eight
neighbours (weights 1/6 for edge neighbours, 1/12 for corners, as in the authors' code), which
couples all removed pixels into one sparse, symmetric positive-definite linear system. netlens
solves it with a batched, Jacobi-preconditioned conjugate gradient in torch (no scipy), then
adds Gaussian noise (std 0.01 in input space) to the imputed pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NetlensError
from .perturb import pixel_ranks, random_ranks, target_probs, to_tensor

__all__ = ["NEIGHBOUR_WEIGHTS", "RoadLerf", "RoadMorf", "impute_linear", "road_curves"]

NEIGHBOUR_WEIGHTS = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]]
)
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's in-image neighbours, for an N×C×H×W tensor.

    Eight shifted slices of a zero-padded copy: much cheaper than a one-channel conv on CPU.
    """
    h, w = v.shape[-2:]
    pad = F.pad(v, (1, 1, 1, 1))
    edge = pad[..., 0:h, 1 : w + 1] + pad[..., 2:, 1 : w + 1] + pad[..., 1 : h + 1, 0:w]
    edge = edge + pad[..., 1 : h + 1, 2:]
    corner = pad[..., 0:h, 0:w] + pad[..., 0:h, 2:] + pad[..., 2:, 0:w] + pad[..., 2:, 2:]
    return edge / 6 + corner / 12


def impute_linear(
    x: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int | None = None,
) -> torch.Tensor:
    """Fill ``removed`` pixels of ``x`` by noisy linear imputation.

    Solves ``deg_i·v_i − Σ_{j removed} w_ij·v_j = Σ_{j kept} w_ij·x_j`` for every removed pixel
    ``i`` (``deg_i``: the summed weights of its in-image neighbours) by conjugate gradient,
    started from the solution at half resolution (coarse to fine), so that large holes need few
    iterations.

    Args:
        x: N×C×H×W (or C×H×W) images.
        removed: N×H×W (or H×W) bool mask of pixels to impute, shared by the channels.
        noise: std of the Gaussian noise added to imputed pixels (0 for the plain solution).
        seed: seed of that noise.
        tol: relative residual at which the solver stops (the default leaves errors well
            below the 0.01 noise: ~2e-4 at 64², ~4e-3 at 224² for a hole of 80 % of the image).
        max_iter: iteration cap (default: H·W, where CG is exact in exact arithmetic).
    """
    single = x.dim() == 3
    xb = x.unsqueeze(0) if single else x
    m = (removed.unsqueeze(0) if removed.dim() == 2 else removed).unsqueeze(1).to(xb.dtype)
    v = _solve(xb, m.expand_as(xb).contiguous(), tol, max_iter)
    if noise > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        v = v + m * noise * torch.randn(v.shape, generator=gen).to(v.device, v.dtype)
    return v[0] if single else v


def _coarse_guess(x: torch.Tensor, m: torch.Tensor, tol: float) -> torch.Tensor:
    """Initial values for the removed pixels: the problem solved at half resolution."""
    known = 1 - m
    xs = F.avg_pool2d(x * known, 2, ceil_mode=True)
    ks = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse_m = (ks == 0).to(x.dtype)
    coarse = _solve(torch.where(ks > 0, xs / ks.clamp_min(1e-12), xs), coarse_m, tol, None)
    up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    return up[..., : x.shape[-2], : x.shape[-1]]


def _solve(x: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int | None) -> torch.Tensor:
    """``x`` with its ``m``-masked pixels replaced by the linear system's solution (PCG)."""
    if not bool(m.any()):
        return x.clone()
    deg = _neighbour_sum(torch.ones_like(x[:1, :1]))
    inv_deg = m / deg

    def apply(v: torch.Tensor) -> torch.Tensor:
        return m * (deg * v - _neighbour_sum(m * v))

    b = m * _neighbour_sum(x * (1 - m))
    v = torch.zeros_like(x)
    if min(x.shape[-2:]) >= 8 and float(m.mean()) > 0.05:
        v = m * _coarse_guess(x, m, tol)
    r = b - apply(v)
    z = r * inv_deg
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    limit = (tol * b.flatten(2).norm(dim=2)).clamp_min(1e-12)
    for it in range(max_iter or x.shape[-1] * x.shape[-2]):
        if it % 8 == 0 and bool((r.flatten(2).norm(dim=2) <= limit).all()):
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(pap))
        v = v + alpha * p
        r = r - alpha * ap
        z = r * inv_deg
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        p, rz = z + beta * p, rz_new
    return x * (1 - m) + m * v


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
    seed: int = 0,
) -> np.ndarray:
    """N×len(fractions) target probabilities after removing and imputing each fraction.

    ``order``: ``"morf"`` (most relevant removed first), ``"lerf"`` (least relevant first) or
    ``"random"`` (the baseline; heatmaps unused).
    """
    if order not in ("morf", "lerf", "random"):
        raise NetlensError(f"ROAD order must be morf, lerf or random, not '{order}'")
    h = np.asarray(heatmaps.detach().cpu() if isinstance(heatmaps, torch.Tensor) else heatmaps)
    tg = to_tensor(targets, x).long().cpu().tolist()
    hw = x.shape[-2] * x.shape[-1]
    counts = torch.tensor([round(f * hw) for f in fractions], device=x.device)
    curves = np.empty((x.shape[0], len(fractions)))
    for i in range(x.shape[0]):
        if order == "random":
            ranks = random_ranks(h.shape[1:], seed + i)
        else:
            ranks = pixel_ranks(h[i], seed + i)
        r = torch.as_tensor(ranks, device=x.device).unsqueeze(0)
        c = counts.view(-1, 1, 1)
        removed = r < c if order != "lerf" else r >= hw - c
        imputed = impute_linear(
            x[i].expand(len(fractions), *x.shape[1:]), removed, noise=noise, seed=seed + i
        )
        curves[i] = target_probs(model, iter(imputed), tg[i], batch_size, len(fractions))
    return curves


@dataclass(frozen=True)
class _Road:
    order: ClassVar[str] = "morf"
    needs_masks: ClassVar[bool] = False

    def cost(
        self,
        n_images: int,
        fractions: tuple[float, ...] = FRACTIONS,
        random_baseline: bool = True,
        **opts: Any,
    ) -> int:
        """Images forward-passed: ``N·len(fractions)``, doubled for the random baseline."""
        return n_images * len(fractions) * (2 if random_baseline else 1)

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
        **opts: Any,
    ) -> dict[str, np.ndarray]:
        fr = tuple(float(f) for f in fractions)
        kw = dict(fractions=fr, batch_size=int(batch_size), noise=float(noise), seed=int(seed))
        curve = road_curves(model, x, heatmaps, targets, order=self.order, **kw)
        out = {"score": curve.mean(axis=1), "curve": curve, "curve_x": np.asarray(fr)}
        if random_baseline:
            rnd = road_curves(model, x, heatmaps, targets, order="random", **kw)
            out |= {"baseline": rnd.mean(axis=1), "curve_baseline": rnd}
        return out


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
