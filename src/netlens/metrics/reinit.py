"""Re-initialising the blocks of a model copy for the randomisation cascade.

Split out of :mod:`netlens.metrics.randomization` (which re-exports :func:`model_copy` and
:func:`randomize_modules`): which modules hold state the cascade re-draws, and how each kind is
re-drawn (its own initialiser; a frozen BatchNorm's identity; the weights behind
``weight_norm``/``spectral_norm``, with fresh power-iteration vectors; a ``prune``d tensor's
``_orig``, under its mask), from generators seeded for the call and restored after it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NetlensError

__all__ = [
    "has_own_params",
    "has_own_state",
    "model_copy",
    "owner",
    "quantized_layers",
    "randomize_modules",
]

# a fresh BatchNorm's values of the buffers a frozen one (torchvision.ops.FrozenBatchNorm2d,
# timm's freeze_batch_norm_2d, detectron2's) keeps its scale, shift and statistics in
FROZEN_NORM = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
POWER_ITERATIONS = 15  # as torch's spectral_norm runs when it is applied


def owner(name: str) -> str:
    """The module a parameter owner stands for: a weight's ``parametrizations`` (weight_norm,
    spectral_norm) belong to the layer they parametrize."""
    head, sep, _ = name.partition(".parametrizations")
    return head if sep else name


def has_own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def frozen_norm(m: nn.Module) -> bool:
    """``m`` is a frozen BatchNorm: its running statistics (and scale, shift) are float
    buffers, and it has no parameters and no method to reset them."""
    if has_own_params(m) or hasattr(m, "reset_parameters") or hasattr(m, "reset_running_stats"):
        return False
    bufs = {n: b for n, b in m.named_buffers(recurse=False) if n in FROZEN_NORM}
    stats = {"running_mean", "running_var"} <= bufs.keys()
    return stats and all(b.is_floating_point() for b in bufs.values())


def has_own_state(m: nn.Module) -> bool:
    """``m`` holds what the cascade re-initialises: parameters of its own, float buffers it
    can reset (a ``BatchNorm(affine=False)``'s running statistics), or a frozen BatchNorm's."""
    if has_own_params(m) or frozen_norm(m):
        return True
    resets = hasattr(m, "reset_running_stats") or hasattr(m, "reset_parameters")
    return resets and any(b.is_floating_point() for b in m.buffers(recurse=False))


def quantized_layers(model: nn.Module) -> list[str]:
    """The modules holding packed quantized weights (``torch.ao`` convert, dynamic quantization):
    what no initialiser can redraw."""
    return [
        n
        for n, m in model.named_modules()
        if ".quantized" in type(m).__module__
        and callable(getattr(m, "_weight_bias", None))
        and not type(m).__name__.endswith("PackedParams")
        and not has_own_params(m)
    ]


def randomize_modules(model: nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the named modules of ``model`` in place (a copy: never the user's model).

    Modules with ``reset_parameters`` use their own initialiser (a BatchNorm's resets its
    running statistics too); a frozen BatchNorm (scale, shift and statistics in buffers) is
    reset to a fresh BatchNorm's values (1, 0, 0, 1); others get N(0, 0.02) weights and their
    ``reset_running_stats``, and so do the model's own parameters (``""``: all of them, its
    children not with them; ``".name"``: that one). A layer under the hook-based
    ``weight_norm``/``spectral_norm`` gets its stored weights (``weight_g``/``weight_v``,
    ``weight_orig``) re-drawn from its freshly initialised weight: its ``reset_parameters``
    writes only the weight the hook recomputes on the next forward; one under
    ``torch.nn.utils.parametrizations`` gets them through its ``right_inverse``, and its
    ``parametrizations`` (listed as modules of their own) are reset with it, not redrawn as
    N(0, 0.02). A spectral norm's power-iteration vectors are redrawn and iterated on the new
    weight (the old ones belong to the trained weight and scale the new one arbitrarily).
    A tensor pruned with ``torch.nn.utils.prune`` gets its fresh values in ``<name>_orig`` and
    keeps its mask.
    """
    mods = dict(model.named_modules())
    done: set[str] = set()
    with _seeded_rngs(model, seed), torch.no_grad():
        for name in names:
            if name.startswith("."):  # one of the model's own parameters
                getattr(model, name[1:]).normal_(0.0, 0.02)
                continue
            target = owner(name)
            if target not in done:
                done.add(target)
                _reinit(mods[target], root=not target)


@contextlib.contextmanager
def _seeded_rngs(model: nn.Module, seed: int) -> Iterator[None]:
    """torch's generators the initialisers of ``model`` draw from, seeded with ``seed`` and
    restored afterwards: the CPU one, and every generator of each accelerator type (CUDA, MPS,
    ...) the model's tensors are on. Not ``torch.manual_seed``: it seeds every CUDA generator
    too (queued until CUDA initialises where it has not), which a fork of the CPU's alone
    leaves changed."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.default_generator.manual_seed(seed)
        for kind in _accelerators(model):
            try:
                mod = torch.get_device_module(kind)
            except RuntimeError:  # a backend with no torch.<kind> module: nothing to seed
                continue
            count = getattr(mod, "device_count", lambda: 0)()
            seed_all = getattr(mod, "manual_seed_all", None) or getattr(mod, "manual_seed", None)
            if not count or seed_all is None:
                continue
            devices = [kind] if kind == "mps" else list(range(count))  # MPS: one generator
            stack.enter_context(torch.random.fork_rng(devices=devices, device_type=kind))
            seed_all(seed)  # as torch.manual_seed did for them, now restored on the way out
        yield


def _accelerators(model: nn.Module) -> list[str]:
    """The device types other than the CPU that ``model``'s tensors are on."""
    kinds = {t.device.type for t in (*model.parameters(), *model.buffers())}
    return sorted(kinds - {"cpu", "meta"})


def _reinit(m: nn.Module, root: bool) -> None:
    if not root and hasattr(m, "reset_parameters"):
        _reset(m)  # a BatchNorm's resets its running statistics too
        _sync_norm_hooks(m)
    elif not root and frozen_norm(m):
        for key, value in FROZEN_NORM.items():
            if m._buffers.get(key) is not None:
                m._buffers[key].fill_(value)  # type: ignore[union-attr]
    else:
        for p in m.parameters(recurse=False):
            p.normal_(0.0, 0.02)
        if not root:
            _assign(m, {n: _normal_like(getattr(m, n)) for n in _parametrized(m)})
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    _refresh_spectral(m)


def _parametrized(m: nn.Module) -> list[str]:
    from torch.nn.utils import parametrize

    return list(m.parametrizations.keys()) if parametrize.is_parametrized(m) else []  # type: ignore[union-attr]


def _normal_like(t: torch.Tensor) -> torch.Tensor:
    return torch.randn(t.shape).mul_(0.02).to(t.device, t.dtype)


def _reset(m: nn.Module) -> None:
    """``m.reset_parameters()``; for a layer under ``torch.nn.utils.parametrizations``
    (``weight_norm``, ``spectral_norm``), whose ``reset_parameters`` would write into the weight
    the parametrization computes and throws away, a plain copy's fresh weights are assigned
    through the parametrization (its ``right_inverse`` stores them in ``original*``)."""
    names = _parametrized(m)
    if not names:
        m.reset_parameters()
        return
    plain = copy.deepcopy(m)
    # not remove_parametrizations: it deletes the properties from the class, which the copy
    # shares with every other copy of the model and with the user's model itself
    plain.__class__ = type(m).__bases__[0]  # the layer's own class (parametrize subclasses it)
    del plain._modules["parametrizations"]
    for n in names:
        plain._parameters[n] = nn.Parameter(getattr(m, n).detach().clone())
    plain.reset_parameters()
    _assign(m, {n: getattr(plain, n).detach() for n in names})
    for group in ("_parameters", "_buffers"):
        for n, t in getattr(plain, group).items():
            if n not in names and t is not None and getattr(m, group).get(n) is not None:
                getattr(m, group)[n].copy_(t)


def _assign(m: nn.Module, fresh: dict[str, torch.Tensor]) -> None:
    """The parametrized tensors of ``m`` set to ``fresh`` values through their
    parametrizations' ``right_inverse``; a parametrization's own parameters are reset first
    (its ``reset_parameters``, else N(0, 0.02)). One without ``right_inverse`` gets the value in
    its ``original`` as it is (or N(0, 0.02) originals where the shapes differ)."""
    for n, value in fresh.items():
        plist = m.parametrizations[n]  # type: ignore[index]
        for sub in plist:
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            else:
                for p in sub.parameters():
                    p.normal_(0.0, 0.02)
        try:
            setattr(m, n, value)
        except (RuntimeError, NotImplementedError):  # no right_inverse
            originals = list(plist.parameters(recurse=False))
            if len(originals) == 1 and originals[0].shape == value.shape:
                originals[0].copy_(value)
            else:
                for p in originals:
                    p.normal_(0.0, 0.02)


def _sync_norm_hooks(m: nn.Module) -> None:
    """The stored weights of ``m``'s hook-based weight/spectral norms and ``prune`` masks set
    from the weight its ``reset_parameters`` just initialised (which the hook would otherwise
    overwrite). A pruned tensor's fresh values go to ``<name>_orig`` and keep the layer's mask
    (which weights the layer has is part of it as it runs, like its shape)."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, BasePruningMethod) and hook._tensor_name:
            orig = getattr(m, hook._tensor_name + "_orig", None)
            fresh = getattr(m, hook._tensor_name, None)
            if isinstance(orig, torch.Tensor) and isinstance(fresh, torch.Tensor):
                orig.copy_(fresh)
                setattr(m, hook._tensor_name, hook.apply_mask(m))  # as its next forward will
        elif isinstance(hook, (WeightNorm, SpectralNorm)):
            w = getattr(m, hook.name, None)
            if not isinstance(w, torch.Tensor):
                continue
            if isinstance(hook, WeightNorm):
                getattr(m, hook.name + "_v").copy_(w)
                getattr(m, hook.name + "_g").copy_(torch.norm_except_dim(w, 2, hook.dim))
            else:
                getattr(m, hook.name + "_orig").copy_(w)


def _redraw(*vectors: torch.Tensor, eps: float = 1e-12) -> None:
    """Unit vectors from the seeded (CPU) generator, written into ``vectors``."""
    for v in vectors:
        v.copy_(F.normalize(torch.randn(v.shape), dim=0, eps=eps).to(v.device, v.dtype))


def _refresh_spectral(m: nn.Module) -> None:
    """A spectral norm on ``m`` (the parametrization or the old hook) given new ``u``/``v``
    and :data:`POWER_ITERATIONS` power iterations on its new weight, as when it is applied:
    in eval mode the weight is divided by ``u·Wv``, and the trained weight's vectors make that
    an arbitrary scale of the new one."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    try:
        from torch.nn.utils.parametrizations import _SpectralNorm
    except ImportError:  # pragma: no cover - a torch without the parametrization
        _SpectralNorm = ()  # type: ignore[assignment,misc]  # noqa: N806
    for n in _parametrized(m):
        plist = m.parametrizations[n]  # type: ignore[index]
        norms = [k for k, p in enumerate(plist) if isinstance(p, _SpectralNorm)]
        if not norms:
            continue
        if plist.is_tensor:
            args: tuple[torch.Tensor, ...] = (plist.original,)
        else:
            args = tuple(getattr(plist, f"original{i}") for i in range(plist.ntensors))
        for k, p in enumerate(plist):
            if k in norms and args[0].ndim > 1:
                _redraw(p._u, p._v, eps=p.eps)
                p._power_method(p._reshape_weight_to_matrix(args[0]), POWER_ITERATIONS)
            if k >= norms[-1]:
                break
            training = p.training
            p.train(False)  # the input of the next one, with no power iteration of its own
            try:
                args = (p(*args),)
            finally:
                p.train(training)
    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm) and hook.n_power_iterations > 0:
            _redraw(getattr(m, hook.name + "_u"), getattr(m, hook.name + "_v"), eps=hook.eps)
            rounds = -(-POWER_ITERATIONS // hook.n_power_iterations)
            for _ in range(rounds):
                w = hook.compute_weight(m, do_power_iteration=True)
            setattr(m, hook.name, w.detach())


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
