"""The captum methods this plugin offers, each as a small function over a logits module.

Every method function takes the model wrapped as a logits module (``LogitsModule``), the
preprocessed batch, one target class per image and the method's options, and returns the
attributions (N×C×H×W, same shape as the input) plus extra metadata for the Result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from netlens.analyzers.options import Option, as_is

if TYPE_CHECKING:
    from netlens.lens import Lens

__all__ = ["METHODS", "LogitsModule", "Method"]

Attribution = tuple[torch.Tensor, dict[str, Any]]


class LogitsModule(nn.Module):
    """The lens' model as an ``nn.Module`` that returns N×K logits (what captum needs).

    Wrapping does not change the user's model: it is only referenced as a child.
    """

    def __init__(self, lens: Lens, binary: bool = False) -> None:
        super().__init__()
        self.model = lens.model
        self._lens = lens
        self._binary = binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._lens.logits(x)
        # one logit z: evidence for the negative class is −z, for the positive z (targets 0, 1)
        return torch.cat([-z, z], dim=1) if self._binary else z


@dataclass(frozen=True)
class Method:
    """One captum method as a netlens analyzer: its name, title, options and function."""

    name: str
    title: str
    description: str
    compute: Callable[[LogitsModule, torch.Tensor, list[int], Lens, dict[str, Any]], Attribution]
    options: tuple[Option, ...] = ()


def _baseline(lens: Lens, x: torch.Tensor, kind: Any) -> torch.Tensor:
    """``zero`` (the normalised mean image), ``black`` (pixel value 0) or a number."""
    if kind in ("zero", "zeros", None):
        return torch.zeros_like(x)
    if kind == "black":  # a black image as the model's preprocessing makes it
        c, (h, w) = x.shape[1], x.shape[-2:]
        if c in (1, 3):
            import numpy as np

            black = lens.preprocess(np.zeros((max(h, 2), max(w, 2), c), np.uint8))
            value = black[0, :, 0, 0].to(device=x.device, dtype=x.dtype)
        else:  # no image file has these channels: the spec's statistics, one per channel
            mean, std = (torch.tensor(v, dtype=x.dtype) for v in lens.transform.statistics(c))
            value = (-mean / std).to(x.device)
        return value.view(1, c, 1, 1).expand_as(x).contiguous()
    from netlens.errors import AnalyzerError

    try:
        value = float(kind)
    except (TypeError, ValueError):
        raise AnalyzerError(
            f"baseline '{kind}' not understood; use zero, black or a number"
        ) from None
    if not math.isfinite(value):
        raise AnalyzerError(f"baseline '{kind}' is not finite; use zero, black or a finite number")
    return torch.full_like(x, value)


def integrated_gradients(
    net: LogitsModule, x: torch.Tensor, targets: list[int], lens: Lens, opts: dict[str, Any]
) -> Attribution:
    from captum.attr import IntegratedGradients

    base = _baseline(lens, x, opts["baseline"])
    attr, delta = IntegratedGradients(net).attribute(
        x,
        baselines=base,
        target=targets,
        n_steps=int(opts["steps"]),
        method=str(opts["integration"]),
        internal_batch_size=int(opts["batch_size"]),
        return_convergence_delta=True,
    )
    return attr, {
        "completeness_delta": delta.detach().abs().cpu().tolist(),
        "baseline": str(opts["baseline"]),
    }


def saliency(
    net: LogitsModule, x: torch.Tensor, targets: list[int], lens: Lens, opts: dict[str, Any]
) -> Attribution:
    from captum.attr import Saliency

    return Saliency(net).attribute(x, target=targets, abs=bool(opts["abs"])), {}


def occlusion(
    net: LogitsModule, x: torch.Tensor, targets: list[int], lens: Lens, opts: dict[str, Any]
) -> Attribution:
    from captum.attr import Occlusion

    from netlens.errors import AnalyzerError

    c, h, w = x.shape[1:]
    win = int(opts["window"] or max(2, min(h, w) // 8))
    stride = int(opts["stride"] or max(1, win // 2))
    if win > min(h, w):
        raise AnalyzerError(
            f"occlusion: window {win} is larger than the input, {h}×{w} pixels after "
            f"preprocessing; give --window {min(h, w)} or less (window= in Python)"
        )
    if stride > win:
        raise AnalyzerError(
            f"occlusion: stride {stride} is larger than the {win}-pixel window (input "
            f"{h}×{w} after preprocessing); give --stride {win} or less (stride= in Python)"
        )
    attr = Occlusion(net).attribute(
        x,
        sliding_window_shapes=(c, win, win),
        strides=(c, stride, stride),
        target=targets,
        baselines=float(opts["baseline"]),
        perturbations_per_eval=int(opts["batch_size"]),
    )
    return attr, {"window": win, "stride": stride}


def guided_backprop(
    net: LogitsModule, x: torch.Tensor, targets: list[int], lens: Lens, opts: dict[str, Any]
) -> Attribution:
    from captum.attr import GuidedBackprop

    from netlens.errors import NetlensWarning

    if not any(isinstance(m, nn.ReLU) for m in lens.model.modules()):
        warnings.warn(
            "guided-backprop guides the gradient through nn.ReLU modules, and this model has "
            "none (GELU, SiLU or functional ReLUs): its maps are the plain gradient "
            "(saliency with --no-abs)",
            NetlensWarning,
            stacklevel=2,
        )
    return GuidedBackprop(net).attribute(x, target=targets), {}


def guided_gradcam(
    net: LogitsModule, x: torch.Tensor, targets: list[int], lens: Lens, opts: dict[str, Any]
) -> Attribution:
    from captum.attr import GuidedGradCam

    from netlens.errors import AnalyzerError
    from netlens.layers import resolve_layers, trace_calls

    found = resolve_layers(lens.model, opts["layer"], example=lens.example())
    if len(found) > 1:
        shown = ", ".join(str(f) for f in found[:4]) + (", ..." if len(found) > 4 else "")
        raise AnalyzerError(
            f"guided-gradcam explains one layer, and '{opts['layer']}' matches {len(found)} "
            f"({shown}); name one"
        )
    chosen = found[0]
    name = chosen.split("@")[0].split(":")[0]
    traced = trace_calls(lens.model, x[:1].detach())
    calls = [c for c in traced if c.name == name]
    call = int(chosen.split("@")[1]) if "@" in chosen else -1
    if calls and call % len(calls) != len(calls) - 1:  # captum hooks a module's last call
        other = _hookable_before(traced, calls[call % len(calls)])
        advice = f"pick '{other}' (the layer before it, run once) or" if other else "so"
        raise AnalyzerError(
            f"guided-gradcam hooks a module's last call (captum), but '{chosen}' is call "
            f"{call % len(calls)} of {len(calls)} of a module run several times; {advice} "
            "use netlens cam, which reads any call"
        )
    out = calls[-1].output if calls else None
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AnalyzerError(
            f"guided-gradcam needs a layer with N×C×H×W maps, but '{name}' gives {shape} "
            "(tokens or vectors); pick a convolutional layer (a ViT's patch_embed.proj) or "
            "use netlens cam, which reads token layers"
        )
    layer = dict(lens.model.named_modules())[name]
    attr = GuidedGradCam(net, layer).attribute(x, target=targets)
    return attr, {"layer": name}


def _hookable_before(traced: list[Any], wanted: Any) -> str | None:
    """The last module before call ``wanted`` (in completion order) that runs once and gives
    N×C×H×W maps of the same shape (the conv before a reused ReLU): captum hooks it."""
    out = wanted.output
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return None
    runs: dict[str, int] = {}
    for c in traced:
        runs[c.name] = runs.get(c.name, 0) + 1
    before = traced[: next(i for i, c in enumerate(traced) if c is wanted)]
    for c in reversed(before):
        got = c.output
        if runs[c.name] == 1 and isinstance(got, torch.Tensor) and got.shape == out.shape:
            return str(c.name)
    return None


_BATCH = Option(
    "batch_size", 32, "inputs per forward pass inside the method", int, low=1, high=1024
)
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "integrated-gradients",
            "Integrated Gradients",
            "Captum Integrated Gradients: path integral of gradients from a baseline",
            integrated_gradients,
            (
                Option("steps", 32, "integration steps", int, low=1, high=10_000),
                Option("baseline", "zero", "zero (mean image), black or a number", as_is),
                Option(
                    "integration",
                    "gausslegendre",
                    "captum's integration method",
                    str,
                    choices=(
                        "gausslegendre",
                        "riemann_left",
                        "riemann_right",
                        "riemann_middle",
                        "riemann_trapezoid",
                    ),
                ),
                _BATCH,
            ),
        ),
        Method(
            "saliency",
            "Saliency",
            "Captum Saliency: input gradient of the target logit",
            saliency,
            (Option("abs", True, "absolute gradients", bool),),
        ),
        Method(
            "occlusion",
            "Occlusion",
            "Captum Occlusion: drop in the target logit when a patch is blanked",
            occlusion,
            (
                Option("window", None, "patch size in pixels (default: side/8)", int, low=1),
                Option("stride", None, "patch stride (default: window/2)", int, low=1),
                Option("baseline", 0.0, "value of a blanked patch", float),
                _BATCH,
            ),
        ),
        Method(
            "guided-backprop",
            "Guided Backprop",
            "Captum Guided Backprop: gradients through ReLUs that pass only positive ones",
            guided_backprop,
        ),
        Method(
            "guided-gradcam",
            "Guided Grad-CAM",
            "Captum Guided Grad-CAM: Guided Backprop times the layer's Grad-CAM",
            guided_gradcam,
            (Option("layer", "auto", "the Grad-CAM layer", as_is),),
        ),
    ]
}
