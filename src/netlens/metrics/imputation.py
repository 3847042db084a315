"""ROAD's noisy linear imputation as one batched, multigrid-preconditioned CG solve in numpy.

Every removed pixel ``i`` takes the weighted mean of its eight in-image neighbours (weights 1/6
for edge neighbours, 1/12 for corners, as in the ROAD authors' code)::

    deg_i·v_i − Σ_{j removed} w_ij·v_j = Σ_{j kept} w_ij·x_j

a sparse, symmetric positive-definite system per image and mask (the same matrix for every
channel). All systems of a call are solved together on full H×W grids (unknowns where the mask
is set) by conjugate gradients, preconditioned by a geometric multigrid V-cycle (Jacobi
smoothing; bilinear-like transfer; a coarse cell is unknown when its 2×2 fine pixels all are),
which converges in about ten iterations whatever the hole size. It was measured against
``scipy.sparse.linalg.splu`` per system (the ROAD reference code's direct solve): the same
answers, about as much CPU per system, but the direct solve holds the GIL, while these few large
numpy operations release it, so independent groups of systems run on every core and a busy
machine slows them in proportion (no thread barriers to spin on).
"""

from __future__ import annotations

import os

import numpy as np

from ..parallel import map_batches

__all__ = ["solve_imputation"]

GROUP = 16  # systems per independent solve: a few MB per array, shared out among threads


def solve_imputation(
    x: np.ndarray, removed: np.ndarray, *, tol: float = 1e-5, workers: int | None = None
) -> np.ndarray:
    """``x`` (B×C×H×W) with its ``removed`` (B×H×W bool) pixels solved for, in ``x``'s dtype.

    Args:
        x: images; float32 or float64 (the solve runs in that precision).
        removed: pixels to impute, one mask per image, shared by its channels.
        tol: stop when every system's preconditioned residual fell by this factor. That
            bounds the residual, not the error: the imputed values are then within about
            ``10·tol`` of the exact solution (6e-5 to 9e-5 measured at the default 1e-5),
            which moves ROAD's probabilities by 3e-6 at most.
        workers: threads, each solving its own groups of 16 systems (default: the CPU count).
    """
    x = np.ascontiguousarray(x)
    removed = np.asarray(removed, dtype=bool)
    groups = [slice(s, s + GROUP) for s in range(0, len(x), GROUP)]
    run = lambda g: _solve_group(x[g], removed[g], tol)  # noqa: E731
    parts = map_batches(run, groups, workers or os.cpu_count() or 1)
    return np.concatenate(parts) if parts else x.copy()


def _solve_group(x: np.ndarray, removed: np.ndarray, tol: float) -> np.ndarray:
    m = removed[:, None].astype(x.dtype)
    if not m.any():
        return x.copy()
    level = _Level(m)
    r = level.m12 * _smooth(x * (1 - m))  # Σ_{j kept} w_ij·x_j on the removed pixels
    v = np.zeros_like(x)
    z = level.vcycle(r)
    p = z.copy()
    rz = _dot(r, z)
    stop = rz * tol**2
    for _ in range(200):
        ap = level.apply(p)
        alpha = rz / np.maximum(_dot(p, ap), np.finfo(x.dtype).tiny)
        v += alpha * p
        r -= alpha * ap
        z = level.vcycle(r)
        rz_new = _dot(r, z)
        if (rz_new <= stop).all():
            break
        p *= rz_new / np.maximum(rz, np.finfo(x.dtype).tiny)
        p += z
        rz = rz_new
    return np.where(m > 0, v, x)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-map inner products, shaped B×C×1×1."""
    return np.einsum("bchw,bchw->bc", a, b)[..., None, None]


def _smooth(v: np.ndarray) -> np.ndarray:
    """The separable [1, 2, 1] ⊗ [1, 2, 1] sum over each pixel's 3×3 block, zero outside.

    Both passes run on the flattened maps (long contiguous loops, twice as fast as 2-D slices);
    the horizontal one then takes back what it wrapped around from the neighbouring rows.
    """
    h, w = v.shape[-2:]
    flat = v.reshape(-1)
    t = flat * 2
    t[1:] += flat[:-1]
    t[:-1] += flat[1:]
    rows, v3 = t.reshape(-1, h, w), v.reshape(-1, h, w)
    rows[:, 1:, 0] -= v3[:, :-1, -1]
    rows[1:, 0, 0] -= v3[:-1, -1, -1]
    rows[:, :-1, -1] -= v3[:, 1:, 0]
    rows[:-1, -1, -1] -= v3[1:, 0, 0]
    maps = t.reshape(-1, h * w)
    out = maps * 2
    out[:, w:] += maps[:, :-w]
    out[:, :-w] += maps[:, w:]
    return out.reshape(v.shape)


class _Level:
    """One grid of the V-cycle: the masked operator, its Jacobi smoother and the next grid.

    The neighbour sum is ``(smooth(v) − 4v) / 12``, so the operator is
    ``m·((deg + 1/3)·v − smooth(v)/12)`` for ``v`` zero outside the mask ``m``.
    """

    def __init__(self, m: np.ndarray) -> None:
        h, w = m.shape[-2:]
        deg = (_smooth(np.ones((1, 1, h, w), m.dtype)) - 4) / 12
        self.m, self.m12 = m, m / 12
        self.md = m * (deg + 1 / 3)
        self.inv = m / deg
        self.coarse: _Level | None = None
        if min(h, w) >= 4:
            padded = np.pad(m, ((0, 0), (0, 0), (0, h % 2), (0, w % 2)))
            mc = _pool(padded) == 4  # a coarse cell is unknown when all four fine pixels are
            if mc.any():
                self.coarse = _Level(mc.astype(m.dtype))

    def apply(self, v: np.ndarray) -> np.ndarray:
        out = self.md * v
        out -= self.m12 * _smooth(v)
        return out

    def vcycle(self, r: np.ndarray) -> np.ndarray:
        """One symmetric V-cycle on ``A z = r``: Jacobi, coarse correction, Jacobi."""
        z = self.inv * r
        if self.coarse is None:
            z += self.inv * (r - self.apply(z))
            return z
        h, w = r.shape[-2:]
        res = np.pad(r - self.apply(z), ((0, 0), (0, 0), (0, h % 2), (0, w % 2)))
        ec = self.coarse.vcycle(_pool(_smooth(res)) * (self.coarse.m / 16))
        up = ec.repeat(2, axis=-2).repeat(2, axis=-1)
        z += _smooth(up)[..., :h, :w] * (self.m / 16)
        z += self.inv * (r - self.apply(z))
        return z


def _pool(v: np.ndarray) -> np.ndarray:
    """Sums over 2×2 blocks (even H and W)."""
    return v[..., 0::2, 0::2] + v[..., 1::2, 0::2] + v[..., 0::2, 1::2] + v[..., 1::2, 1::2]
