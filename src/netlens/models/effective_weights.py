"""The weights a pruned, weight-normed or spectral-normed layer computes with, from the tensors
its state_dict holds instead of ``weight``.

A model saved while ``torch.nn.utils.prune`` or a weight reparametrization is still applied
keeps, in place of the layer's ``weight``:

- pruning (``prune.l1_unstructured`` and the like): ``weight_orig`` and ``weight_mask``; the
  layer computes with ``weight_mask * weight_orig``;
- weight norm, ``parametrizations.weight_norm``: ``parametrizations.weight.original0`` (g) and
  ``original1`` (v); the old hook-based ``weight_norm``: ``weight_g`` and ``weight_v``; the
  layer computes with ``g * v / ||v||``, the norm over every dim but ``dim`` (read off g's
  shape: g keeps ``dim``, every other dim is 1; a 0-dim g: ``dim=None``, the whole norm);
- spectral norm, ``parametrizations.spectral_norm``: ``parametrizations.weight.original`` and
  the buffers ``parametrizations.weight.0._u``/``_v``; the old ``spectral_norm``:
  ``weight_orig``, ``weight_u`` and ``weight_v``; in eval mode (no power iteration) the layer
  computes with ``W / sigma``, ``sigma = u . (W_mat v)``, ``W_mat`` being W with ``dim`` moved
  to the front and the rest flattened (``dim`` read off u's and v's sizes).

:func:`effective_state` rewrites each such group into the effective ``weight`` (computed with
the same torch operations the layer uses, so the loaded model gives the same outputs), and
refuses, in one line, a group it cannot evaluate without guessing.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from typing import NoReturn

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError, NetlensWarning

__all__ = ["effective_state", "resolve_groups"]

_PARAM = re.compile(r"^(?P<mod>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.(?P<rest>.+)$")
_KINDS = {
    "pruned": "pruned (torch.nn.utils.prune)",
    "weight_norm": "weight-normed",
    "spectral_norm": "spectral-normed",
}
_REMOVE = (
    "saved before prune.remove / with parametrizations; remove them before saving "
    "(prune.remove(module, 'weight'), torch.nn.utils.parametrize.remove_parametrizations("
    "module, 'weight'), torch.nn.utils.remove_weight_norm / remove_spectral_norm)"
)


def effective_state(
    state: dict[str, torch.Tensor], name: str, note: bool = True
) -> dict[str, torch.Tensor]:
    """``state`` with every pruning / weight-norm / spectral-norm key group replaced by the
    effective ``weight`` (at the group's place, so the order of the rest is kept), and
    ``_metadata`` kept; ``state`` itself when there is none. ``note``: a one-line
    :class:`NetlensWarning` names the layers so loaded; ``name`` (the file) is for messages."""
    out, found = resolve_groups(state, name)
    if not found:
        return state
    if note:
        parts = []
        for kind, keys in found.items():
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            parts.append(f"{_KINDS[kind]} {shown}")
        warnings.warn(
            f"{name}: the file holds {'; '.join(parts)} as their parts (the keys pruning and "
            "weight/spectral norm save); they are loaded as the effective weights the model "
            "computes with in eval mode",
            NetlensWarning,
            stacklevel=3,
        )
    return out


def resolve_groups(
    state: dict[str, torch.Tensor], name: str
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """``state`` rewritten (see :func:`effective_state`) and the rewritten weights' keys by
    kind (``pruned``, ``weight_norm``, ``spectral_norm``); ``state`` itself and an empty dict
    when nothing is rewritten."""
    groups = _groups(state, name)
    if not groups:
        return state, {}
    first: dict[str, str] = {}  # the group's first key → its target
    members: dict[str, str] = {}
    for target, (_kind, keys) in groups.items():
        held = set(keys.values())
        first[next(k for k in state if k in held)] = target
        members.update(dict.fromkeys(held, target))
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    found: dict[str, list[str]] = {}
    for k, v in state.items():
        if k in first:
            target = first[k]
            kind, keys = groups[target]
            out[target] = _compute(kind, keys, state, target, name)
            found.setdefault(kind, []).append(target)
        elif k not in members:
            out[k] = v
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out, found


def _groups(state: dict[str, torch.Tensor], name: str) -> dict[str, tuple[str, dict[str, str]]]:
    """target key → (kind, {role: key}) for every group in ``state``."""
    groups: dict[str, tuple[str, dict[str, str]]] = {}
    param: dict[str, dict[str, str]] = {}
    for k in state:
        m = _PARAM.match(k)
        if m is not None:
            param.setdefault(m["mod"] + m["name"], {})[m["rest"]] = k
    for target, parts in param.items():
        groups[target] = _parametrized(target, parts, state, name)
    for k in state:
        if _PARAM.match(k) is not None:
            continue
        base, _, role = k.rpartition("_")
        if not base or base in state or base in groups:
            continue
        has = {r: f"{base}_{r}" in state for r in ("orig", "mask", "u", "v", "g")}
        if role == "mask" and has["orig"]:
            if has["u"] or has["v"] or has["g"]:
                _refuse(name, base, "both pruning and a weight norm")
            groups[base] = ("pruned", {"orig": f"{base}_orig", "mask": k})
        elif role == "orig" and has["u"] and has["v"] and not has["mask"]:
            keys = {"orig": k, "u": f"{base}_u", "v": f"{base}_v"}
            groups[base] = ("spectral_norm", keys)
        elif role == "g" and has["v"] and not has["orig"]:
            groups[base] = ("weight_norm", {"g": k, "v": f"{base}_v"})
    return groups


def _parametrized(
    target: str, parts: dict[str, str], state: dict[str, torch.Tensor], name: str
) -> tuple[str, dict[str, str]]:
    """The kind of a ``parametrizations.<name>.*`` group (weight or spectral norm alone)."""
    if set(parts) == {"original0", "original1"}:
        return "weight_norm", {"g": parts["original0"], "v": parts["original1"]}
    if set(parts) == {"original", "0._u", "0._v"}:
        return "spectral_norm", {"orig": parts["original"], "u": parts["0._u"], "v": parts["0._v"]}
    keys = ", ".join(sorted(parts)[:4])
    raise ModelLoadError(
        f"{name}: '{target}' is held as a parametrization netlens cannot evaluate on its own "
        f"(parametrizations.{target.rpartition('.')[2]}.{{{keys}}}: not weight norm or spectral "
        f"norm alone); it was {_REMOVE}"
    )


def _compute(
    kind: str, keys: dict[str, str], state: dict[str, torch.Tensor], target: str, name: str
) -> torch.Tensor:
    with torch.no_grad():
        if kind == "pruned":
            orig, mask = state[keys["orig"]], state[keys["mask"]]
            if orig.shape != mask.shape:
                _refuse(name, target, "a mask of another shape than the weight")
            return (mask.to(dtype=orig.dtype) * orig).detach()
        if kind == "weight_norm":
            g, v = state[keys["g"]], state[keys["v"]]
            return torch._weight_norm(v, g, _norm_dim(g, v, target, name)).detach()
        w, u, v = state[keys["orig"]], state[keys["u"]], state[keys["v"]]
        dim = _spectral_dim(w, u, v, target, name)
        sigma = torch.vdot(u, torch.mv(_as_matrix(w, dim), v))
        return (w / sigma).detach()


def _norm_dim(g: torch.Tensor, v: torch.Tensor, target: str, name: str) -> int:
    """Weight norm's ``dim``, read off g's shape (-1: the whole norm, ``dim=None``). Where
    several dims fit they all have size 1, and the norms they give are the same."""
    if g.dim() == 0:
        return -1
    fits = [
        d
        for d in range(v.dim())
        if tuple(g.shape) == tuple(n if i == d else 1 for i, n in enumerate(v.shape))
    ]
    if not fits:
        _refuse(name, target, f"a weight-norm g of shape {list(g.shape)} for v {list(v.shape)}")
    return fits[0]


def _as_matrix(w: torch.Tensor, dim: int) -> torch.Tensor:
    if dim != 0:
        w = w.permute(dim, *[d for d in range(w.dim()) if d != dim])
    return w.reshape(w.size(0), -1)


def _spectral_dim(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, target: str, name: str) -> int:
    """Spectral norm's ``dim``: the dim whose size is u's (and the rest v's). Where two fit
    (a square layer: ``ConvTranspose2d`` norms dim 1, other layers dim 0), the one whose u the
    power iteration left as ``normalize(W_mat v)``; refused when that does not tell them apart
    and their sigmas differ."""
    if w.dim() < 2 or u.dim() != 1 or v.dim() != 1:
        _refuse(name, target, "a spectral norm of a weight with fewer than 2 dims")
    fits = [
        d for d in range(w.dim()) if w.shape[d] == u.numel() and w.numel() == u.numel() * v.numel()
    ]
    if not fits:
        _refuse(name, target, f"spectral-norm u, v of sizes {u.numel()}, {v.numel()}")
    if len(fits) == 1:
        return fits[0]
    sigmas = [torch.vdot(u, torch.mv(_as_matrix(w, d), v)).float() for d in fits]
    if all(torch.allclose(s, sigmas[0], rtol=1e-6, atol=0) for s in sigmas):
        return fits[0]
    aligned = [
        float(F.cosine_similarity(u.float(), torch.mv(_as_matrix(w, d), v).float(), dim=0).abs())
        for d in fits
    ]
    best = max(range(len(fits)), key=aligned.__getitem__)
    rest = [a for i, a in enumerate(aligned) if i != best]
    if aligned[best] > 0.99 and max(rest) < aligned[best] - 0.05:
        return fits[best]
    _refuse(name, target, f"a spectral norm whose dim (one of {fits}) its u and v do not tell")


def _refuse(name: str, target: str, why: str) -> NoReturn:
    raise ModelLoadError(
        f"{name}: '{target}' is held as {why}, which netlens cannot turn into the layer's weight "
        f"without guessing; it was {_REMOVE}"
    )
