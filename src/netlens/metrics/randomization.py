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

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import NetlensError, NetlensWarning
from ..write_guard import tensors_in
from .perturb import flat_maps
from .reinit import has_own_params as _has_own_params
from .reinit import has_own_state as _has_own_state
from .reinit import model_copy, quantized_layers, randomize_modules
from .reinit import owner as _owner

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


ROOT_STEP = "(root parameters)"  # the step of the parameters the model itself holds


def cascade_blocks(
    model: nn.Module, min_steps: int = 4, example: torch.Tensor | None = None
) -> list[tuple[str, list[str]]]:
    """Blocks to randomise, top (logits) first: ``[(block name, [module names])]``.

    Parameterised modules (and those with resettable float buffers: a
    ``BatchNorm(affine=False)``'s running statistics, a frozen BatchNorm's) are grouped by
    their top-level block, below any chain of single-child wrappers (a Lightning module holding
    an EMA wrapper holding the network: the steps are ``net.net.net.fc``, ...); when the model
    has fewer than ``min_steps`` such blocks (one big ``features`` Sequential), the grouping
    goes one level deeper, up to three levels; a block holding more than a quarter of them is
    then split into its sub-blocks (a ViT's ``blocks`` into ``blocks.0``, ... ``blocks.11``).
    With an ``example`` input the blocks are ordered by where the forward first *starts* a call
    of one of their modules (a model may declare its classifier before its features; a
    parent's own parameters, such as torchvision ViT's ``encoder.pos_embedding``, are used from
    its call's start, before its children's), else by declaration. A block that is only such a
    parent's own parameters is named with them: ``"encoder (pos_embedding)"``. Parameters of
    the model itself are :data:`ROOT_STEP` (members ``[""]``): the last step when the input
    meets them before the forward's second block (a ViT's ``cls_token`` and ``pos_embed``) or
    without an ``example``; one the forward first uses later (a cosine classifier's prototypes,
    an open_clip-style ``proj``) is randomised where that use is, top-down. When they fall in
    more than one place, the later ones are ``"(root parameters: proj)"`` (members
    ``[".proj"]``) and the input-side ones stay :data:`ROOT_STEP`.
    """
    quantized = quantized_layers(model)
    if quantized:
        raise NetlensError(
            f"{type(model).__name__} is quantized ({len(quantized)} layer(s) such as "
            f"{quantized[0]}): packed quantized weights cannot be re-initialised; run sanity on "
            "the float model (before torch.ao.quantization's convert)"
        )
    owners = [n for n, m in model.named_modules() if n and _has_own_state(m)]
    root = _has_own_params(model)
    if not owners and not root:
        raise NetlensError(f"{type(model).__name__} has no parameters to randomise")
    trunk = _trunk(model)
    base = trunk.count(".") + 1 if trunk else 0
    groups: dict[str, list[str]] = {}
    for depth in (1, 2, 3):
        groups = {}
        for name in owners:
            groups.setdefault(".".join(_owner(name).split(".")[: base + depth]), []).append(name)
        if len(groups) >= min_steps:
            break
    groups = _split_large(model, groups, deepest=base + 6)
    order = list(groups)
    if example is not None:
        order = _forward_order(model, example, groups)
    steps: list[tuple[str, list[str]]] = []
    run: list[str] = []  # root parameters used together, between two blocks
    for key in [*reversed(order), None]:
        if key is not None and key.startswith("."):
            run.append(key)
            continue
        if run:
            steps.append((ROOT_STEP, run))
            run = []
        if key is not None:
            steps.append((_step_name(model, key, groups), groups[key]))
    placed = {k for _, members in steps for k in members if k.startswith(".")}
    rest = [f".{n}" for n, _ in model.named_parameters(recurse=False) if f".{n}" not in placed]
    steps += [(ROOT_STEP, rest)] if rest else []
    return _root_names(steps, bool(rest))


def _trunk(model: nn.Module) -> str:
    """The module below the chain of single-child wrappers the model starts with (those
    holding nothing of their own), where the grouping's depth counts from; "" when none."""
    path: list[str] = []
    module = model
    while True:
        kids = list(module.named_children())
        if len(kids) != 1 or kids[0][0] == "parametrizations":
            return ".".join(path)
        if path and _has_own_state(module):
            return ".".join(path)
        path.append(kids[0][0])
        module = kids[0][1]


def _root_names(steps: list[tuple[str, list[str]]], rest: bool) -> list[tuple[str, list[str]]]:
    """One root step: :data:`ROOT_STEP` over all of the model's parameters (``[""]``); more:
    the input-side one (``rest``, last) stays :data:`ROOT_STEP`, the others say what they
    hold."""
    at = [k for k, (s, _) in enumerate(steps) if s == ROOT_STEP]
    if len(at) == 1:
        steps[at[0]] = (ROOT_STEP, [""])
        return steps
    for k in at[:-1] if rest else at:
        names = [m[1:] for m in steps[k][1]]
        more = ", …" if len(names) > 3 else ""
        steps[k] = (f"(root parameters: {', '.join(names[:3])}{more})", steps[k][1])
    return steps


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
    cannot take a pre-hook, the order in which calls complete. The model's own parameters that
    the forward first uses after its second block has started are in the order too, as
    ``".name"`` at that use (the others are left to :data:`ROOT_STEP`)."""
    from ..layers import trace_calls

    mods = dict(model.named_modules())
    started: dict[str, int] = {}
    handles = []
    roots = {id(p): f".{n}" for n, p in model.named_parameters(recurse=False)}

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
        try:
            with _FirstUse(roots, started) if roots else contextlib.nullcontext():
                calls = trace_calls(model, example[:1])
        except NetlensError:
            if not roots:
                raise
            started.clear()  # once more without watching the model's own parameters
            roots = {}
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
    keyed = [(reached[g], g) for g in groups if reached[g] < never]
    starts = sorted(k for k, _ in keyed)
    if hooked and roots and len(starts) > 1:  # used after the stem: where the use is
        keyed += [(k, n) for n, k in started.items() if n.startswith(".") and k > starts[1]]
    return unreached + [g for _, g in sorted(keyed)]


class _FirstUse(TorchFunctionMode):
    """Notes in ``started`` when a torch function is first given one of ``params``."""

    def __init__(self, params: dict[int, str], started: dict[str, int]) -> None:
        super().__init__()
        self.params, self.started = params, started

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):  # noqa: ANN204
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") != "__get__":  # an attribute read is no use
            for t in tensors_in((args, kwargs)):
                name = self.params.get(id(t))
                if name is not None:
                    self.started.setdefault(name, len(self.started))
        return func(*args, **kwargs)


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
    steps = cascade_blocks(work, min_steps, x)
    for k, (block, members) in enumerate(steps):
        randomize_modules(work, members, seed + k)
        with warnings.catch_warnings():  # a randomised copy's empty or cancelled maps are
            warnings.simplefilter("ignore", NetlensWarning)  # expected, not the user's to fix
            h = _explain(explain, work, x, targets)
        maps.append(h)
        rho.append(spearman(original, h))
        sim.append(ssim(original, h))
        names.append(block)
        if on_step is not None:
            on_step(block)
    extra = {"warnings": tied_steps(work, steps)}
    return CascadeResult(names, np.stack(maps), np.stack(rho), np.stack(sim), threshold, extra)


def tied_steps(model: nn.Module, steps: list[tuple[str, list[str]]]) -> list[str]:
    """One line per pair of steps that share a parameter or buffer (tied weights: a decoder's
    ``weight`` that *is* the embedding's): re-initialising the upper step re-draws the lower
    one's too, so from there on the lower block is random before its own step."""
    mods = dict(model.named_modules())
    names: dict[int, list[str]] = {}
    for n, t in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(t), []).append(n)
    owned: dict[int, list[int]] = {}
    for k, (_, members) in enumerate(steps):
        for member in members:
            if member.startswith("."):
                tensors = [getattr(model, member[1:])]
            else:
                m = mods[member]
                own = (*m.parameters(recurse=False), *m.buffers(recurse=False))
                tensors = [t for t in own if t.is_floating_point()]
            for t in tensors:
                at = owned.setdefault(id(t), [])
                if k not in at:
                    at.append(k)
    lines: dict[tuple[int, int], list[str]] = {}
    for tid, at in owned.items():
        for later in at[1:]:
            lines.setdefault((at[0], later), []).append(" = ".join(names.get(tid, ["a buffer"])))
    return [
        f"sanity: step '{steps[i][0]}' also re-initialises step '{steps[j][0]}' (they share "
        f"{', '.join(shared[:3])}{', …' if len(shared) > 3 else ''}): from step {i + 1} on, "
        f"'{steps[j][0]}' is random too"
        for (i, j), shared in sorted(lines.items())
    ]


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
