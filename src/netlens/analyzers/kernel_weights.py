"""The weights a conv or linear layer convolves with, read without running it.

``.weight`` is not always what the layer uses:

- timm's weight-standardised convs (``StdConv2d``/``StdConv2dSame``: BiT ResNetV2, ViT hybrids;
  ``ScaledStdConv2d``/``ScaledStdConv2dSame``: NFNets) standardise each filter in their forward,
  ``(w − mean) / √(var + eps)``, times ``gain × scale`` for the scaled ones: the raw parameter's
  scale is irrelevant to the model. Hugging Face transformers' ``WeightStandardizedConv2d``
  (BiT, ViT-hybrid, DPT-hybrid) does the same.
- another Conv2d subclass with its own forward (a copied big_transfer ``StdConv2d``) is run on
  one small random input (:func:`checked_forward_weight`; its forward alone, without the
  user's hooks, which are not for that input; when that fails, after its forward pre-hooks,
  which may compute what it convolves with): when its output is not that of
  ``F.conv2d`` with ``.weight`` but is with the per-filter standardised weight, that is shown;
  otherwise (or when the forward fails) a warning says the tiles show ``.weight``, which may
  not be what the forward computes.
- ``torch.nn.utils.prune`` (``weight_orig × weight_mask``), the classic
  ``torch.nn.utils.weight_norm`` (``g · v/‖v‖``) and ``spectral_norm`` (``weight_orig / σ``)
  recompute ``.weight`` in a forward pre-hook: until a forward runs (a lens without an input size,
  after ``load_state_dict``) the attribute holds stale values.

:func:`effective_weight` computes them as the layer's own code does (timm's ``F.batch_norm``
call, the hook's ``apply_mask``/``compute_weight``), leaving the module untouched. Parametrized
weights (``torch.nn.utils.parametrizations``) are computed on access and need nothing here.

LoRA-adapted layers convolve with the base weights plus the adapter's low-rank update
(:func:`adapted_weight`): peft's ``LoraLayer`` (``base_layer`` + ``get_delta_weight(adapter)``
of its active, unmerged adapters: what ``merge_and_unload()`` gives), loralib's layers
(``weight + (lora_B @ lora_A) × scaling`` unless ``merged``; ``ConvLoRA`` keeps the weight in
its ``conv``) and wrappers computing
``base_layer(x) + lora_B(lora_A(x)) × scaling`` with a conv/linear ``lora_A`` and a 1×1
``lora_B``. Other adapters (DoRA and other LoRA variants, LoHa, LoKr, IA³) are named in one
warning line: the tiles then show the base weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "adapted_weight",
    "adapter_base",
    "checked_forward_weight",
    "conditional_conv_error",
    "effective_weight",
    "kernel_layer_name",
]

_STD_CONVS = {"StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"}
# Hugging Face transformers' BiT (also ViT-hybrid, DPT-hybrid): the same per-filter standardisation
_HF_STD_CONVS = {"WeightStandardizedConv2d"}


def _std_conv(mod: nn.Module) -> str | None:
    """The timm or transformers weight-standardised conv class ``mod`` is (or derives from)."""
    for cls in type(mod).__mro__:
        if cls.__name__ in _STD_CONVS and cls.__module__.startswith("timm."):
            return cls.__name__
        if cls.__name__ in _HF_STD_CONVS and cls.__module__.startswith("transformers."):
            return cls.__name__
    return None


def _standardised(mod: nn.Module, weight: torch.Tensor) -> tuple[torch.Tensor, str]:
    """timm's standardisation of ``weight``, exactly as its forward computes it."""
    get_weight = getattr(mod, "get_weight", None)
    if callable(get_weight):  # timm ≤ 0.4.9 kept the computation in get_weight()
        return get_weight(), "standardised per filter by the layer's get_weight()"
    gain = getattr(mod, "gain", None)
    scale = getattr(mod, "scale", None)
    affine = None
    if isinstance(gain, torch.Tensor) and scale is not None:
        affine = (gain * scale).view(-1)
    eps = float(getattr(mod, "eps", 1e-6))
    out = F.batch_norm(
        weight.reshape(1, weight.shape[0], -1),
        None,
        None,
        weight=affine,
        training=True,
        momentum=0.0,
        eps=eps,
    ).reshape_as(weight)
    how = f"standardised per filter, (w − mean)/√(var + {eps:g})"
    return out, how + (" × gain × scale (γ/√fan_in)" if affine is not None else "")


def _hooked(mod: nn.Module, name: str = "weight") -> tuple[torch.Tensor, str] | None:
    """The value the last forward pre-hook that sets ``mod.<name>`` would set, if any."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = None
    for hook in mod._forward_pre_hooks.values():
        if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            found = hook.apply_mask(mod), f"pruned: {name}_orig × {name}_mask"
        elif isinstance(hook, WeightNorm) and hook.name == name:
            found = hook.compute_weight(mod), f"weight_norm: g · v/‖v‖ (dim {hook.dim})"
        elif isinstance(hook, SpectralNorm) and hook.name == name:  # eval: no power iteration
            found = hook.compute_weight(mod, False), f"spectral_norm: {name}_orig / σ"
    return found


def effective_weight(mod: nn.Module, weight: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The weight ``mod`` convolves with (``weight`` is its ``.weight``) and how it was derived
    (None: ``.weight`` as it is)."""
    how = None
    with torch.no_grad():
        hooked = _hooked(mod)
        if hooked is not None:
            weight, how = hooked
        if _std_conv(mod) and weight.dim() == 4:
            weight, std = _standardised(mod, weight)
            how = std if how is None else f"{how}, then {std}"
    return weight.detach(), how


def _own_forward(mod: nn.Module) -> bool:
    """Whether ``mod`` is a Conv2d whose class replaces Conv2d's forward (or _conv_forward)."""
    if not isinstance(mod, nn.Conv2d) or isinstance(mod, nn.ConvTranspose2d):
        return False
    cls = type(mod)
    return cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward


def _same_pad(x: torch.Tensor, mod: nn.Conv2d) -> torch.Tensor:
    """``x`` padded as TensorFlow's (and timm's/transformers') dynamic "SAME" padding does."""
    pads = []
    for i, k, s, d in zip(x.shape[-2:], mod.kernel_size, mod.stride, mod.dilation, strict=True):
        total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
        pads.append((total // 2, total - total // 2))
    return F.pad(x, [*pads[1], *pads[0]])


def _conv_candidates(mod: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    """``x`` convolved with ``weight`` under the layer's padding and under "SAME" padding."""
    out = []
    if isinstance(mod.padding, tuple) and mod.padding_mode == "zeros":
        args = (mod.stride, mod.padding, mod.dilation, mod.groups)
        out.append(F.conv2d(x, weight, mod.bias, *args))
    args = (mod.stride, 0, mod.dilation, mod.groups)
    out.append(F.conv2d(_same_pad(x, mod), weight, mod.bias, *args))
    return out


def _matches(y: torch.Tensor, candidates: list[torch.Tensor]) -> bool:
    tol = 1e-4 * max(float(y.abs().max()), 1.0)
    return any(
        c.shape == y.shape and bool(torch.allclose(c, y, rtol=1e-3, atol=tol)) for c in candidates
    )


def checked_forward_weight(
    mod: nn.Module, weight: torch.Tensor, how: str | None
) -> tuple[torch.Tensor, str | None, str | None]:
    """For a Conv2d subclass with its own forward that netlens does not know (a copied
    ``StdConv2d``, say): whether it convolves with ``weight`` (checked on one small random
    input), else with ``weight`` standardised per filter (then returned so). Otherwise, or
    when its forward fails on that input, ``weight`` as it is and one warning (without the
    layer's name) that the tiles are the stored values, not those the forward computes."""
    known = how is not None or _std_conv(mod) or _adapter_parts(mod) or _peft_tuner(mod)
    if known or not _own_forward(mod) or weight.dim() != 4:
        return weight, how, None
    kh, kw = mod.kernel_size
    size = [
        max(8, (k - 1) * d + 2 * s + 1)
        for k, d, s in zip((kh, kw), mod.dilation, mod.stride, strict=True)
    ]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, mod.in_channels, *size, generator=g).to(weight)
    try:
        with torch.no_grad():
            y = _forward_alone(mod, x)
            if not isinstance(y, torch.Tensor) or _matches(y, _conv_candidates(mod, x, weight)):
                return weight, how, None
            for eps in dict.fromkeys([float(getattr(mod, "eps", 1e-5)), 1e-5, 1e-6, 1e-10]):
                flat = weight.reshape(weight.shape[0], -1)
                var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
                std = ((flat - mean) / torch.sqrt(var + eps)).reshape_as(weight)
                if _matches(y, _conv_candidates(mod, x, std)):
                    kind = type(mod).__name__
                    return (
                        std.detach(),
                        (
                            f"standardised per filter, (w − mean)/√(var + {eps:g}), as {kind}'s "
                            "forward computes them (checked on a test input)"
                        ),
                        None,
                    )
    except Exception as exc:  # noqa: BLE001 - a forward that needs other inputs or state
        kind = f"{type(mod).__module__}.{type(mod).__name__}"
        return (
            weight,
            how,
            (
                f"{kind} has its own forward, which failed on a test input ({type(exc).__name__}): "
                "the tiles and norms show its stored .weight, which may not be the weights it "
                "convolves with"
            ),
        )
    kind = f"{type(mod).__module__}.{type(mod).__name__}"
    return (
        weight,
        how,
        (
            f"{kind} computes the weights it convolves with in its own forward, in a way netlens "
            "does not recognise: the tiles and norms show its stored .weight, not those weights"
        ),
    )


def _forward_alone(mod: nn.Module, x: torch.Tensor) -> Any:
    """``mod``'s forward of ``x`` without the user's forward hooks (they are not for this
    input). When the forward alone fails, it is run once more after the module's forward
    pre-hooks, as a call runs them: they may compute what it convolves with (``w_eff``, as the
    legacy weight_norm does ``weight``), setting on the module what its next call would set too."""
    try:
        return mod.forward(x)
    except Exception:  # noqa: BLE001 - it may need what its pre-hooks set
        hooks = dict(mod._forward_pre_hooks)
        if not hooks:
            raise
    args, kwargs = (x,), {}
    for key, hook in hooks.items():
        if key in mod._forward_pre_hooks_with_kwargs:
            out = hook(mod, args, kwargs)
            if out is not None:
                args, kwargs = out
        else:
            out = hook(mod, args)
            if out is not None:
                args = out if isinstance(out, tuple) else (out,)
    return mod.forward(*args, **kwargs)


# attributes that hold an adapter's own weights (a layer carrying one is adapted)
_ADAPTER_PARTS = (
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "lora_layer",
    "lora_up",
    "lora_down",
    "hada_w1_a",
    "lokr_w1",
    "lokr_w1_a",
    "ia3_l",
)


def _peft_tuner(mod: nn.Module) -> bool:
    return any(
        c.__name__ == "BaseTunerLayer" and c.__module__.startswith("peft.")
        for c in type(mod).__mro__
    )


def _adapter_parts(mod: nn.Module) -> list[str]:
    return [a for a in _ADAPTER_PARTS if getattr(mod, a, None) is not None]


def _base_attr(mod: nn.Module) -> str | None:
    """Where an adapter wrapper keeps the layer it adapts: peft's ``base_layer``, loralib's
    ``ConvLoRA.conv`` (factors as tensors beside it); None for other modules."""
    if not (_peft_tuner(mod) or _adapter_parts(mod)):
        return None
    base = getattr(mod, "base_layer", None)
    if isinstance(base, nn.Module) and base is not mod:
        return "base_layer"
    conv = getattr(mod, "conv", None)
    if isinstance(conv, nn.Module) and isinstance(getattr(mod, "lora_A", None), torch.Tensor):
        return "conv"
    return None


def adapter_base(mod: nn.Module) -> nn.Module | None:
    """The layer an adapter wrapper wraps (peft's ``base_layer``, loralib's ``conv``; nested
    ones unwrapped); None when ``mod`` is not such a wrapper."""
    attr = _base_attr(mod)
    if attr is None:
        return None
    base = getattr(mod, attr)
    return adapter_base(base) or base


def kernel_layer_name(layers: dict[str, nn.Module], name: str) -> str | None:
    """The layer a user means by ``name``: the adapter wrapper when ``name`` is the layer it
    wraps (it convolves with base + update); None when ``name`` is one of an adapter's own
    low-rank factors (``conv1.lora_A.default``); ``name`` otherwise."""
    out = name
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:k])
        attr = _base_attr(layers[owner]) if owner in layers else None
        if attr is None:
            continue
        if parts[k] in _ADAPTER_PARTS:
            return None
        if parts[k] == attr and out == ".".join(parts[: k + 1]):
            out = owner  # nested wrappers: climb on
    return out


def _names(adapters: list[str]) -> str:
    return ", ".join(repr(a) for a in adapters)


def _peft_lora(mod: Any, weight: torch.Tensor) -> tuple[torch.Tensor, str | None, str | None]:
    """peft's LoraLayer: base + Σ get_delta_weight(a) over active, unmerged adapters."""
    variants = dict(getattr(mod, "lora_variant", {}) or {})
    variants.update({a: "DoRA" for a, on in (getattr(mod, "use_dora", {}) or {}).items() if on})
    merged = list(getattr(mod, "merged_adapters", []) or [])
    active = [a for a in mod.active_adapters if a in mod.lora_A.keys()]
    if getattr(mod, "disable_adapters", False):  # its forward unmerges, then runs the base
        add, sub, how = [], merged, "adapters disabled: the base layer's weights"
    elif merged:  # its forward runs the base layer alone, merged deltas included
        add, sub, how = [], [], f"LoRA adapter(s) {_names(merged)} merged into the weights"
    else:
        add, sub = active, []
        how = f"LoRA update of adapter(s) {_names(active)} included (+ B·A × scaling)"
        how = how if active else None
    odd = [a for a in add + sub if a in variants]
    if odd:
        kind = ", ".join(sorted({_kind_name(variants[a]) for a in odd}))
        return weight, None, f"adapter(s) {_names(odd)} are a LoRA variant ({kind})"
    if add + sub and getattr(adapter_base(mod), "groups", 1) > 1:  # peft cannot merge these
        return weight, None, f"LoRA adapter(s) {_names(add + sub)} on a grouped conv"
    deltas = {a: mod.get_delta_weight(a) for a in add + sub}
    if any(d.shape != weight.shape for d in deltas.values()):
        return weight, None, f"LoRA adapter(s) {_names(add + sub)} of another shape than the weight"
    for a in add:
        weight = weight + deltas[a].to(weight)
    for a in sub:
        weight = weight - deltas[a].to(weight)
    return weight, how, None


def _kind_name(variant: Any) -> str:
    if isinstance(variant, str):
        return variant
    return variant.__name__ if isinstance(variant, type) else type(variant).__name__


def _scaling(mod: nn.Module) -> float | None:
    scaling = getattr(mod, "scaling", 1.0)
    if isinstance(scaling, torch.Tensor) and scaling.numel() == 1:
        return float(scaling)
    return float(scaling) if isinstance(scaling, int | float) else None


def _plain_lora(mod: nn.Module, weight: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """loralib-style factors (tensors) or a wrapper's conv/linear factor layers: the update
    (None when the form is not one netlens knows) and how it was formed."""
    a, b, scaling = mod.lora_A, mod.lora_B, _scaling(mod)
    if scaling is None or getattr(mod, "fan_in_fan_out", False) or hasattr(mod, "enable_lora"):
        return None, "lora_A/lora_B with an unknown scaling or layout"
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dim() != 2 or b.dim() != 2 or (b @ a).numel() != weight.numel():
            return None, "lora_A/lora_B tensors of unexpected shapes"
        return (b @ a).view(weight.shape) * scaling, "(lora_B @ lora_A) × scaling"
    for m in (a, b):
        if not isinstance(m, nn.Conv2d | nn.Linear) or m.bias is not None:
            return None, "lora_A/lora_B that are not bias-free Conv2d/Linear layers"
    base = adapter_base(mod)
    if isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and weight.dim() == 2:
        delta = b.weight @ a.weight
    elif isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d) and isinstance(base, nn.Conv2d):
        same = all(getattr(a, k) == getattr(base, k) for k in ("stride", "padding", "dilation"))
        if not same or b.kernel_size != (1, 1) or b.stride != (1, 1) or a.groups + b.groups > 2:
            return None, "conv lora_A/lora_B other than base-shaped A and 1×1 B"
        delta = torch.einsum("or,rihw->oihw", b.weight[:, :, 0, 0], a.weight)
    else:
        return None, "lora_A/lora_B that do not match the layer"
    if delta.shape != weight.shape:
        return None, "lora_A/lora_B of unexpected shapes"
    return delta * scaling, "lora_B·lora_A × scaling"


def adapted_weight(
    mod: nn.Module, weight: torch.Tensor, how: str | None = None
) -> tuple[torch.Tensor, str | None, str | None]:
    """``weight`` (the base weights, derived as ``how`` says) with ``mod``'s adapter update
    added; how the result derives; one warning (without the layer's name) when ``mod`` carries
    an adapter netlens does not know, whose update is then left out."""
    parts = _adapter_parts(mod)
    if not parts and not _peft_tuner(mod):
        return weight, how, None
    kind = f"{type(mod).__module__}.{type(mod).__name__}"
    warning = note = None
    with torch.no_grad():
        lora_a = getattr(mod, "lora_A", None)
        delta_fn = callable(getattr(mod, "get_delta_weight", None))
        if isinstance(lora_a, nn.ModuleDict) and delta_fn and hasattr(mod, "active_adapters"):
            weight, note, warning = _peft_lora(mod, weight)
        elif "lora_A" in parts and "lora_B" in parts:
            if getattr(mod, "merged", False) is True:  # loralib's flag (not a method)
                note = "LoRA update merged into the weights"
            else:
                delta, form = _plain_lora(mod, weight)
                if delta is None:
                    warning = form
                else:
                    weight, note = weight + delta.to(weight), f"LoRA update included (+ {form})"
        else:
            warning = "adapter weights " + (", ".join(parts) or "of a peft tuner layer")
    if warning:
        line = (
            f"{kind} carries an adapter netlens does not recognise ({warning}): the tiles show "
            "its base weights without the adapter's update; to see them, merge the adapter into "
            "the weights first where it can be (peft: merge_and_unload())"
        )
        return weight.detach(), how, line
    if note:
        how = note if how is None else f"{how}, then {note}"
    return weight.detach(), how, None


def conditional_conv_error(mod: nn.Module, name: str, weight: Any) -> str | None:
    """Why a conv-like layer with a 2-D weight (timm's ``CondConv2d``: one row per expert) has no
    filters of its own to draw; None for other layers."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    if not hasattr(mod, "kernel_size") or isinstance(mod, nn.Linear):
        return None
    experts = getattr(mod, "num_experts", None)
    mix = f"its {experts} experts'" if experts else "several"
    return (
        f"layer '{name}' ({type(mod).__name__}) is a conditional conv: each input convolves with "
        f"its own mix of {mix} filters, weighted by routing weights computed from that input, so "
        "it has no single set of filters to draw; pick a plain Conv2d (see `netlens layers MODEL`)"
    )
