"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

A copy of the model has its weights re-initialised block by block, cascading from the logits
down to the input; after each step the heatmaps are recomputed and compared with the original
ones by Spearman rank correlation and SSIM. An explanation that still looks the same when the
network computes something else does not explain the network.

Verdict rule: the method *passes* (depends on the learned weights) when the mean Spearman
correlation between the original heatmaps and those of the fully randomised model is below
``threshold`` (0.5 by default); otherwise it is flagged. Images whose original map is flat
(constant, e.g. all zero: nothing to rank) are left out of the mean; when every one is, the
test is *inconclusive* (``passes`` is ``None``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NetlensError

__all__ = [
    "ROOT_STEP",
    "CascadeResult",
    "Randomization",
    "cascade_blocks",
    "cascading_randomization",
    "flat_maps",
    "model_copy",
    "spearman",
    "ssim",
]

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]
DEFAULT_THRESHOLD = 0.5


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], a.size] - 1
    avg = (first + last) / 2.0 + 1.0
    ranks = np.empty(a.size)
    ranks[order] = avg[group]
    return ranks


def spearman(a: Any, b: Any) -> np.ndarray:
    """Per-image Spearman rank correlation of two N×H×W stacks of maps.

    A constant map has no ranking: its correlation is 1.0 with another constant map and 0.0
    with anything else (rather than NaN), so a method whose maps go flat counts as changed.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.empty(len(a))
    for i in range(len(a)):
        ra, rb = _ranks(a[i].ravel()), _ranks(b[i].ravel())
        sa, sb = ra.std(), rb.std()
        if sa == 0 or sb == 0:
            out[i] = 1.0 if sa == sb else 0.0
        else:
            out[i] = float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))
    return out


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised ``size``×``size`` Gaussian window (Wang et al. 2004 use 11 and 1.5)."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return w / w.sum()


def ssim(
    a: Any, b: Any, *, data_range: float = 1.0, size: int = 11, sigma: float = 1.5
) -> np.ndarray:
    """Per-image structural similarity of two N×H×W stacks (Gaussian window, valid region).

    Uses the standard constants K1=0.01, K2=0.03; maps are taken as lying in ``[0, data_range]``.
    """
    x = torch.as_tensor(np.asarray(a, np.float64)).unsqueeze(1)
    y = torch.as_tensor(np.asarray(b, np.float64)).unsqueeze(1)
    size = min(size, *x.shape[-2:])
    size -= 1 - size % 2  # keep it odd
    w = gaussian_window(size, sigma).view(1, 1, size, size)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    vx = F.conv2d(x * x, w) - mx**2
    vy = F.conv2d(y * y, w) - my**2
    cxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).numpy()


def _has_own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _has_own_state(m: nn.Module) -> bool:
    """``m`` holds what the cascade re-initialises: parameters of its own, or float buffers it
    can reset (a ``BatchNorm(affine=False)``'s running statistics)."""
    if _has_own_params(m):
        return True
    resets = hasattr(m, "reset_running_stats") or hasattr(m, "reset_parameters")
    return resets and any(b.is_floating_point() for b in m.buffers(recurse=False))


ROOT_STEP = "(root parameters)"  # the step of the parameters the model itself holds


def _owner(name: str) -> str:
    """The module a parameter owner stands for: a weight's ``parametrizations`` (weight_norm,
    spectral_norm) belong to the layer they parametrize."""
    head, sep, _ = name.partition(".parametrizations")
    return head if sep else name


def cascade_blocks(
    model: nn.Module, min_steps: int = 4, example: torch.Tensor | None = None
) -> list[tuple[str, list[str]]]:
    """Blocks to randomise, top (logits) first: ``[(block name, [module names])]``.

    Parameterised modules (and those with resettable float buffers: a
    ``BatchNorm(affine=False)``'s running statistics) are grouped by their top-level block;
    when the model has fewer than ``min_steps`` such blocks (one big ``features`` Sequential),
    the grouping goes one level deeper, up to three levels; a block holding more than a quarter
    of them is then split into its sub-blocks (a ViT's ``blocks`` into ``blocks.0``, ...
    ``blocks.11``). With an ``example`` input the
    blocks are ordered by where the forward first *starts* a call of one of their modules (a
    model may declare its classifier before its features; a parent's own parameters, such as
    torchvision ViT's ``encoder.pos_embedding``, are used from its call's start, before its
    children's), else by declaration. A block that is only such a parent's own parameters is
    named with them: ``"encoder (pos_embedding)"``. Parameters of the model itself (a ViT's
    ``cls_token`` and ``pos_embed``, which the input meets first) are the last step,
    :data:`ROOT_STEP`.
    """
    owners = [n for n, m in model.named_modules() if n and _has_own_state(m)]
    root = _has_own_params(model)
    if not owners and not root:
        raise NetlensError(f"{type(model).__name__} has no parameters to randomise")
    groups: dict[str, list[str]] = {}
    for depth in (1, 2, 3):
        groups = {}
        for name in owners:
            groups.setdefault(".".join(_owner(name).split(".")[:depth]), []).append(name)
        if len(groups) >= min_steps:
            break
    groups = _split_large(model, groups)
    order = list(groups)
    if example is not None:
        order = _forward_order(model, example, groups)
    steps = [(_step_name(model, g, groups), groups[g]) for g in reversed(order)]
    return steps + [(ROOT_STEP, [""])] if root else steps


def _split_large(
    model: nn.Module, groups: dict[str, list[str]], share: float = 0.25, deepest: int = 6
) -> dict[str, list[str]]:
    """Groups holding more than ``share`` of the parameterised modules that are a stack of
    like blocks split into those blocks, in place, until none does: a ViT's 12 ``blocks`` or a
    Swin's stages are a step each, not one step for the whole trunk (a block's own layers stay
    one step)."""
    total = sum(len(v) for v in groups.values())
    while True:
        out: dict[str, list[str]] = {}
        for g, names in groups.items():
            parts = _stack(model, g, names, deepest) if len(names) > share * total else None
            out.update(parts or {g: names})
        if len(out) == len(groups):
            return out
        groups = out


def _stack(
    model: nn.Module, group: str, names: list[str], deepest: int
) -> dict[str, list[str]] | None:
    """``names`` by block, at the first level below ``group`` that splits them, when those
    blocks are all of one kind (a stack); None otherwise."""
    for depth in range(group.count(".") + 2, deepest + 1):
        parts: dict[str, list[str]] = {}
        for n in names:
            parts.setdefault(".".join(_owner(n).split(".")[:depth]), []).append(n)
        if len(parts) > 1:
            kinds = {type(model.get_submodule(p)) for p in parts}
            return parts if len(kinds) == 1 and group not in parts else None
    return None


def _step_name(model: nn.Module, group: str, groups: dict[str, list[str]]) -> str:
    """A group's step name; a parent's own parameters, when its children are steps of their
    own, say which they are: ``encoder (pos_embedding)``."""
    if groups[group] != [group] or not any(g.startswith(group + ".") for g in groups):
        return group
    module = model.get_submodule(group)
    own = [n for n, _ in module.named_parameters(recurse=False)]
    own = own or [n for n, b in module.named_buffers(recurse=False) if b.is_floating_point()]
    if not own:
        return group
    return f"{group} ({', '.join(own[:3])}{', …' if len(own) > 3 else ''})"


def _forward_order(
    model: nn.Module, example: torch.Tensor, groups: dict[str, list[str]]
) -> list[str]:
    """The groups in the order the forward first starts a call of one of their modules (a
    module's own parameters are there from its call's start: a parent's come before its
    children's); groups it never reaches (a training-only auxiliary head) first, as the
    declaration has them; the declaration order when the dry forward fails. Where a module
    cannot take a pre-hook, the order in which calls complete."""
    from ..layers import trace_calls

    mods = dict(model.named_modules())
    started: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def pre(_m: nn.Module, _args: Any) -> None:
            started.setdefault(name, len(started))

        return pre

    hooked = True
    try:
        for name in dict.fromkeys(_owner(n) for members in groups.values() for n in members):
            try:
                handles.append(mods[name].register_forward_pre_hook(hook(name)))
            except (KeyError, RuntimeError):  # a scripted module, a name that is no module
                hooked = False
        calls = trace_calls(model, example[:1])
    except NetlensError:
        return list(groups)
    finally:
        for h in handles:
            h.remove()
    first: dict[str, int] = {}
    if hooked:
        first, never = started, len(started)
    else:
        for k, c in enumerate(calls):
            first.setdefault(c.name, k)
        never = len(calls)
    reached = {
        g: min((first.get(_owner(n), never) for n in members), default=never)
        for g, members in groups.items()
    }
    unreached = [g for g in groups if reached[g] == never]
    return unreached + sorted((g for g in groups if reached[g] < never), key=reached.__getitem__)


def randomize_modules(model: nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the named modules of ``model`` in place (a copy: never the user's model).

    Modules with ``reset_parameters`` use their own initialiser (a BatchNorm's resets its
    running statistics too); others get N(0, 0.02) weights and their ``reset_running_stats``,
    and so do the model's own parameters (``""``; its children are not reset with it). A layer
    under the hook-based ``weight_norm``/``spectral_norm`` gets its stored weights
    (``weight_g``/``weight_v``, ``weight_orig``) re-drawn from its freshly initialised weight:
    its ``reset_parameters`` writes only the weight the hook recomputes on the next forward;
    one under ``torch.nn.utils.parametrizations`` gets them through its ``right_inverse``.
    """
    mods = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name in names:
            m = mods[name]
            if name and hasattr(m, "reset_parameters"):
                _reset(m)  # a BatchNorm's resets its running statistics too
                _sync_norm_hooks(m)
            else:
                for p in m.parameters(recurse=False):
                    p.normal_(0.0, 0.02)
                if name and hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()


def _reset(m: nn.Module) -> None:
    """``m.reset_parameters()``; for a layer under ``torch.nn.utils.parametrizations``
    (``weight_norm``, ``spectral_norm``), whose ``reset_parameters`` would write into the weight
    the parametrization computes and throws away, a plain copy's fresh weights are assigned
    through the parametrization (its ``right_inverse`` stores them in ``original*``)."""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(m):
        m.reset_parameters()
        return
    names = list(m.parametrizations.keys())  # type: ignore[union-attr]
    plain = copy.deepcopy(m)
    # not remove_parametrizations: it deletes the properties from the class, which the copy
    # shares with every other copy of the model and with the user's model itself
    plain.__class__ = type(m).__bases__[0]  # the layer's own class (parametrize subclasses it)
    del plain._modules["parametrizations"]
    for n in names:
        plain._parameters[n] = nn.Parameter(getattr(m, n).detach().clone())
    plain.reset_parameters()
    for n in names:
        setattr(m, n, getattr(plain, n).detach())
    for group in ("_parameters", "_buffers"):
        for n, t in getattr(plain, group).items():
            if n not in names and t is not None and getattr(m, group).get(n) is not None:
                getattr(m, group)[n].copy_(t)


def _sync_norm_hooks(m: nn.Module) -> None:
    """The stored weights of ``m``'s hook-based weight/spectral norms set from the weight its
    ``reset_parameters`` just initialised (which the hook would otherwise overwrite)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, (WeightNorm, SpectralNorm)):
            w = getattr(m, hook.name, None)
            if not isinstance(w, torch.Tensor):
                continue
            if isinstance(hook, WeightNorm):
                getattr(m, hook.name + "_v").copy_(w)
                getattr(m, hook.name + "_g").copy_(torch.norm_except_dim(w, 2, hook.dim))
            else:
                getattr(m, hook.name + "_orig").copy_(w)


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to randomise. Tensors a hook-based ``weight_norm`` or
    ``spectral_norm`` left on a layer after a forward with gradients (the recomputed
    ``weight``, part of that forward's graph) cannot be deep-copied: they are copied detached,
    and the hook recomputes them on the copy's next forward."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - a lock, a file handle, a C extension object
        raise NetlensError(
            f"sanity randomises a copy of the model, and it cannot be copied: "
            f"{_uncopyable(model)} ({type(exc).__name__}: {str(exc)[:80]}); keep such objects "
            "off the model (or give them __deepcopy__) for this check"
        ) from None


def _uncopyable(model: nn.Module) -> str:
    """Which attribute of which module ``copy.deepcopy`` fails on, for the message."""
    for name, m in model.named_modules():
        for key, value in vars(m).items():
            if key in ("_parameters", "_buffers", "_modules") or isinstance(value, torch.Tensor):
                continue
            try:
                copy.deepcopy(value)
            except Exception:  # noqa: BLE001 - this is the one
                return f"{name}.{key}" if name else f"the model's {key}"
    return "an attribute of the model"


@dataclass
class CascadeResult:
    """Heatmaps and similarities for each step of a cascading randomisation."""

    steps: list[str]
    maps: np.ndarray  # (S+1)×N×H×W: original first, then after each step
    spearman: np.ndarray  # S×N
    ssim: np.ndarray  # S×N
    threshold: float = DEFAULT_THRESHOLD
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flat(self) -> np.ndarray:
        """N bools: the original map is flat (constant, e.g. all zero: nothing to rank), so the
        image is left out of the verdict."""
        return flat_maps(self.maps[0])

    @property
    def final_spearman(self) -> float:
        """Mean Spearman of the fully randomised step over the images with a map to rank
        (NaN when there are none)."""
        judged = self.spearman[-1][~self.flat]
        return float(np.mean(judged)) if judged.size else float("nan")

    @property
    def passes(self) -> bool | None:
        """True when the maps of the fully randomised model no longer rank like the original;
        None (inconclusive) when every original map is flat."""
        if not (~self.flat).any():
            return None
        return self.final_spearman < self.threshold


def flat_maps(maps: Any) -> np.ndarray:
    """Per map of an N×H×W stack: flat (the same value everywhere, or not finite)?"""
    m = np.asarray(maps, np.float64).reshape(len(maps), -1)
    with np.errstate(invalid="ignore"):
        return ~(np.ptp(m, axis=1) > 0) if m.shape[1] else np.ones(len(m), bool)


def _explain(
    explain: Explainer, model: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> np.ndarray:
    h = explain(model, x, targets)
    h = h.detach().float().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)
    if h.shape != (x.shape[0], *x.shape[-2:]):
        raise NetlensError(f"the explainer returned {h.shape}, expected N×H×W at input size")
    return h.astype(np.float32)


def cascading_randomization(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explain: Explainer,
    *,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    min_steps: int = 4,
    on_step: Callable[[str], None] | None = None,
) -> CascadeResult:
    """Randomise a deep copy of ``model`` block by block from the top; compare heatmaps.

    Args:
        model: the trained model (left untouched: a deep copy is randomised).
        x: preprocessed N×C×H×W inputs.
        targets: N class indices to explain (kept fixed across steps: the original model's).
        explain: ``explain(model, x, targets) -> N×H×W`` heatmaps.
        seed: seed of the re-initialisation.
        threshold: the verdict's Spearman threshold.
        min_steps: see :func:`cascade_blocks`.
        on_step: called with each block name after it is done (progress).
    """
    original = _explain(explain, model, x, targets)
    work = model_copy(model)
    maps, rho, sim, names = [original], [], [], []
    for k, (block, members) in enumerate(cascade_blocks(work, min_steps, x)):
        randomize_modules(work, members, seed + k)
        h = _explain(explain, work, x, targets)
        maps.append(h)
        rho.append(spearman(original, h))
        sim.append(ssim(original, h))
        names.append(block)
        if on_step is not None:
            on_step(block)
    return CascadeResult(names, np.stack(maps), np.stack(rho), np.stack(sim), threshold)


@dataclass(frozen=True)
class Randomization:
    """Rank correlation with the maps of a fully randomised model copy; lower is better.

    The end point of the cascading test as a per-image score for ``evaluate`` (which passes the
    method as ``explain``); not in the default metric set, since it costs one explanation of
    every image on a randomised copy. ``"ssim"`` is returned too. An image whose map is flat
    (nothing to rank) scores NaN: left out of the mean.
    """

    name: ClassVar[str] = "randomization"
    needs_masks: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = False
    default: ClassVar[bool] = False

    def cost(self, n_images: int, **opts: Any) -> int:
        """No plain forward passes: one more explanation (CAM) per image, on the random copy."""
        return 0

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        heatmaps: Any,
        targets: Any,
        masks: Any = None,
        explain: Explainer | None = None,
        seed: int = 0,
        **opts: Any,
    ) -> dict[str, np.ndarray]:
        if explain is None:
            raise NetlensError("the randomization metric needs explain(model, x, targets)")
        work = model_copy(getattr(model, "inner", model))  # evaluate's counting wrapper
        for k, (_, members) in enumerate(cascade_blocks(work, example=x)):
            randomize_modules(work, members, int(seed) + k)
        t = torch.as_tensor(np.asarray(targets)).long().to(x.device)
        random_maps = _explain(explain, work, x, t)
        h = np.asarray(heatmaps, np.float32)
        flat = flat_maps(h)  # nothing to rank: left out (NaN), as evaluate's flat maps are
        score, sim = spearman(h, random_maps), ssim(h, random_maps).astype(np.float64)
        score[flat], sim[flat] = np.nan, np.nan
        return {"score": score, "ssim": sim}
