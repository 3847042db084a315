"""Which layers' outputs keep channels last (N×H×W×C, N×L×C), learned from one forward.

A module's name does not say how its output is laid out: a ``GELU`` or a ``LayerNorm``
between a ConvNeXt block's two pointwise ``Linear`` layers sees and returns N×H×W×C (timm's
``ConvNeXtBlock`` without ``conv_mlp``, Hugging Face's ``ConvNextLayer``), the same ``GELU``
after a convolution N×C×H×W. Reading the first as N×C×H×W gives per-"channel" statistics,
feature maps and ablations over image rows. So a forward of one image (the one that tells
whether the model ends in a sigmoid, before any analyzer's hook is set) follows the tensors
themselves:

- convolutions, batch/instance/group norms, 2-d pools and upsampling return N×C×H×W;
  a ``Linear`` acts on the last axis, so its 4-d output is N×H×W×C; so does a layer norm
  whose size is the last axis' (timm's ``LayerNorm2d`` permutes around its call: its
  channels are second); a norm that says its ``data_format`` is read by it; torchvision's
  ``Permute`` says where it moves the channels;
- a module that returns a tensor another call returned (a container, an in-place activation)
  has that call's layout, and one whose output has its input's shape, an input another call
  returned (activations, dropout, scaling), keeps that input's layout, as does one that
  changes only that input's channel axis (a LoRA adapter around a ``Linear``, a pointwise
  ``F.linear``); fed by plain tensor
  ops instead (a ``permute`` in the forward, a window reverse, a block's reshapes), it has the
  layout of the latest decided call with as many dims and the same batch when its input has
  that call's output shape, the other one when the channels moved. Tokens (N×L×C) and
  window-folded maps (attention over B·windows×h×w×C) in between are not compared with:
  TinyViT's blocks end in an N×L×C MLP, MaxViT's and GCViT's attention runs on windows.

The same rules tell a 3-d output's layout: N×L×C tokens (a ``Linear``, a ``LayerNorm``) or
N×C×L (a ``Conv1d``, a ``BatchNorm1d``).

Layers this does not decide (a block's output computed by plain tensor ops) are left to the
rules of :func:`netlens.activations.channels_last`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["CHANNELS_FIRST", "learn_layouts", "learned_layout", "learning_layouts", "share_layouts"]

_LEARNED: weakref.WeakKeyDictionary[nn.Module, dict[str, bool]] = weakref.WeakKeyDictionary()

CHANNELS_FIRST = (  # modules whose outputs have channels second, as torch's own
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
)


def share_layouts(model: nn.Module, other: nn.Module) -> None:
    """Give ``other``, a module of ``model``'s architecture (a randomised copy), its layouts."""
    if model in _LEARNED and other is not model:
        _LEARNED[other] = _LEARNED[model]


def learned_layout(model: nn.Module, layer: str) -> bool | None:
    """True/False when the dry forward decided ``layer``'s layout (N×H×W×C or N×L×C / N×C×H×W
    or N×C×L); ``layer`` may name one call (``act@1``) of a module run on both layouts."""
    learned = _LEARNED.get(model)
    if learned is None:
        return None
    name = layer.split(":")[0]
    found = learned.get(name) if "@" in name else None
    return found if found is not None else learned.get(name.split("@")[0])


def learn_layouts(model: nn.Module, x: torch.Tensor) -> None:
    """Learn, once per model, the layouts of its layers' 3-d and 4-d outputs from a forward of
    ``x[:1]``; a forward that fails leaves the rules to decide."""
    from .layers import eval_mode

    with learning_layouts(model), torch.no_grad(), eval_mode(model):
        try:
            model(x[:1])
        except Exception:  # noqa: BLE001 - the analyses report the model's own error
            pass


@contextmanager
def learning_layouts(model: nn.Module) -> Iterator[None]:
    """Learn the layouts from the model's next forward inside the block (one netlens runs
    anyway: the output check of :meth:`netlens.Lens.learn_output`), once per model; kept
    only when that forward ran to its end."""
    if model in _LEARNED:
        yield
        return
    from .layers import named_layers

    found: dict[str, set[bool]] = {}
    calls: dict[str, list[bool | None]] = {}  # each call's layout, for modules run several times
    made: dict[int, bool] = {}  # id(tensor) → layout of the call that returned it
    alive: list[torch.Tensor] = []  # keeps every id above unique during the forward
    inputs: list[tuple[nn.Module, Any]] = []  # (module, first tensor input) of running calls
    # (dims, batch) → the latest decided call's output shape and layout, for such outputs
    last: dict[tuple[int, int], tuple[torch.Size, bool]] = {}
    done: list[bool] = []

    def enter(m: nn.Module, args: tuple) -> None:
        inputs.append((m, next((a for a in args if isinstance(a, torch.Tensor)), None)))

    def leave(name: str):  # noqa: ANN202 - a forward hook
        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            while inputs and inputs[-1][0] is not m:  # a call that raised, caught by its caller
                inputs.pop()
            inp = inputs.pop()[1] if inputs else None
            seen = calls.setdefault(name, [])
            seen.append(None)
            if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
                return
            layout = _layout(m, out, inp, made)
            if layout is None:
                layout = _after(out, inp, last.get((out.dim(), out.shape[0])))
            seen[-1] = layout
            if layout is not None:
                alive.append(out)
                made[id(out)] = layout
                found.setdefault(name, set()).add(layout)
                last[out.dim(), out.shape[0]] = (out.shape, layout)

        return hook

    handles = [model.register_forward_hook(lambda m, i, o: done.append(True))]
    try:
        for name, mod in named_layers(model).items():
            handles.append(mod.register_forward_pre_hook(enter))
            handles.append(mod.register_forward_hook(leave(name)))
        yield
    finally:
        for h in handles:
            h.remove()
    if done:
        learned = {name: s.pop() for name, s in found.items() if len(s) == 1}
        for name, layouts in calls.items():  # a module run on both layouts: by call
            if len(layouts) > 1 and name not in learned:
                n = len(layouts)
                for k, layout in enumerate(layouts):
                    if layout is not None:
                        learned[f"{name}@{k}"] = learned[f"{name}@{k - n}"] = layout
        _LEARNED[model] = learned


def _layout(m: nn.Module, out: torch.Tensor, inp: Any, made: dict[int, bool]) -> bool | None:
    if id(out) in made:  # a container's last call, or an in-place module: the same tensor
        return made[id(out)]
    if type(m).__name__ == "Permute" and type(m).__module__.startswith("torchvision."):
        dims = [int(d) for d in m.dims]
        return True if dims == [0, 2, 3, 1] else False if dims == [0, 3, 1, 2] else None
    if isinstance(inp, torch.Tensor) and inp.dim() != out.dim() and not isinstance(m, nn.Linear):
        return None  # a flatten or reshape (patch embedding to tokens): not a layer's layout
    if isinstance(m, CHANNELS_FIRST):
        return False
    if isinstance(m, nn.Linear):
        return True
    data_format = str(getattr(m, "data_format", "")).lower()
    if data_format in ("channels_last", "channels_first"):
        return data_format == "channels_last"
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return _layer_norm(m, out)
    if isinstance(inp, torch.Tensor) and inp.shape == out.shape and id(inp) in made:
        return made[id(inp)]  # elementwise: activations, dropout, layer scale
    return _pointwise(out, inp, made)


def _pointwise(out: torch.Tensor, inp: Any, made: dict[int, bool]) -> bool | None:
    """A module that changes only the channel count of an input whose layout is known keeps
    that layout: a pointwise layer that is no ``nn.Linear`` (a LoRA adapter around one, an
    ``F.linear`` in a forward) on N×H×W×C or N×L×C changes only the last axis, a 1×1 conv
    written by hand on N×C×H×W only the second."""
    if not isinstance(inp, torch.Tensor) or id(inp) not in made or inp.dim() != out.dim():
        return None
    differ = [d for d in range(out.dim()) if inp.shape[d] != out.shape[d]]
    nhwc = made[id(inp)]
    return nhwc if differ == [out.dim() - 1 if nhwc else 1] else None


def _layer_norm(m: nn.LayerNorm, out: torch.Tensor) -> bool | None:
    """Over the last axis (N×H×W×C), unless the channels sit second: timm's ``LayerNorm2d``
    (a ``LayerNorm`` that permutes around its call, named for it). When C = W both fit, and
    the class says which: any layer norm not named 2-d norms the last axis."""
    c = m.normalized_shape[0]
    last, second = out.shape[-1] == c, out.shape[1] == c
    if "2d" in type(m).__name__.lower():
        return False if second else None
    return True if last else False if second else None


def _after(out: torch.Tensor, inp: Any, last: tuple[torch.Size, bool] | None) -> bool | None:
    """A module keeping its input's shape, fed by plain tensor ops (``x.permute(0, 3, 1, 2)``
    in a forward, between a norm and an activation: timm's MambaOut stem; a window reverse
    before MaxViT's ``ls1``; TinyViT's block, whose input its stage permutes): ``last`` is
    the latest decided call with as many dims and the same batch (not TinyViT's N×L×C MLP
    nor MaxViT's attention on B·windows maps); its layout when the input has that call's
    output shape, the other layout when it has that shape with the channels moved; None when
    neither, or both (C = H = W)."""
    if last is None or not isinstance(inp, torch.Tensor) or inp.shape != out.shape:
        return None
    shape, nhwc = last
    if len(shape) != out.dim() or shape[0] != out.shape[0]:
        return None
    if len(shape) == 3:  # N×L×C ↔ N×C×L
        moved: tuple[int, ...] = (shape[0], shape[2], shape[1])
    else:
        n, a, b, c = shape
        moved = (n, c, a, b) if nhwc else (n, b, c, a)
    same, other = inp.shape == shape, inp.shape == moved
    if same == other:
        return None
    return nhwc if same else not nhwc
