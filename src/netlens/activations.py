"""Bring layer activations into N×C×H×W form, whatever the architecture.

CNN layers already are. timm ViT blocks give N×L×D tokens: prefix tokens (class, register,
distillation) are dropped and the rest reshaped to the patch grid; Hiera's (timm's and Hugging
Face's), which its stages keep in mask-unit order, are put back in place by the model's own
``reroll``. timm Swin /
ConvNeXt-style stages that keep channels last (N×H×W×C) are permuted, and so are the layers of
torchvision's Swin and ConvNeXt blocks that its ``Permute`` modules put channels last. Models
needing something else can set ``model.netlens_reshape = fn(tensor, layer_name) -> N×C×H×W``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .channel_layout import CHANNELS_FIRST, learned_layout
from .errors import AnalyzerError

__all__ = [
    "channels_last",
    "is_spatial",
    "patch_grid",
    "patch_stride",
    "tensor_output",
    "to_spatial",
]


def _token_layout(
    model: nn.Module, length: int, hw: Sequence[int] | None = None
) -> tuple[int, int, int] | None:
    """(prefix tokens, grid height, grid width) of ``length`` tokens; None when no grid fits.

    The patch embedding's grid for the input's size ``hw`` (:func:`patch_grid`, exact from
    its convolution) decides when the tokens are that many patches and at most as many prefix
    tokens (class, register, distillation) as the model has (:func:`_prefix_count`): CaiT's
    self-attention blocks carry no class token although the model has one. Otherwise the grid
    of the input's shape ``hw`` (square for a square input; an exact aspect before a rounded
    one) after the model's prefix tokens (0–2 when it does not say).
    """
    n = _prefix_count(model)
    most = n if n is not None else 2
    found = patch_grid(model, hw)
    if found is not None:
        (h, w), _ = found
        if 0 <= length - h * w <= (n if n is not None else _UNNAMED_PREFIX):
            return length - h * w, h, w
    embed = getattr(model, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)  # a timm hybrid's (a CNN before the patches)
    if grid and hw is not None and callable(getattr(embed, "dynamic_feat_size", None)):
        grid = embed.dynamic_feat_size(tuple(int(v) for v in hw))  # timm's dynamic_img_size
    if grid:
        h, w = int(grid[0]), int(grid[1])
        if 0 <= length - h * w <= most:
            return length - h * w, h, w
    tries = ([most] if n is not None else []) + list(range(most + 1))
    for exact in (True, False):  # 18 tokens of a 32×128 input: 2 + 2×8 before 2×9
        for k in tries:
            grid = _grid(length - k, hw, exact)
            if grid is not None and _plausible(grid, hw):
                return k, *grid
    return None


_WIDEST_PATCH = 64  # the most input pixels per token row or column (LeViT's last stage: 56)


def _plausible(grid: tuple[int, int], hw: Sequence[int] | None) -> bool:
    """Whether a guessed grid's patches are no wider than :data:`_WIDEST_PATCH` on an ``hw``
    input: a detector's 6 box-and-score rows of a 416×416 image are no 2×2 grid."""
    return hw is None or all(g >= int(s) // _WIDEST_PATCH for g, s in zip(grid, hw, strict=True))


def _grid(n: int, hw: Sequence[int] | None, exact: bool = False) -> tuple[int, int] | None:
    """An h×w grid of ``n`` patches shaped as an ``hw`` input (h/w = H/W exactly, or to a
    patch's rounding unless ``exact``); square when the input is, or not known."""
    if n <= 0:
        return None
    if hw is None or hw[0] == hw[1]:
        side = math.isqrt(n)
        return (side, side) if side * side == n else None
    ratio = hw[0] / hw[1]
    for h in range(1, n + 1):
        w, rest = divmod(n, h)
        if rest:
            continue
        if (h * int(hw[1]) == w * int(hw[0])) if exact else abs(h - w * ratio) < 1.0:
            return h, w
    return None


_UNNAMED_PREFIX = 16  # most tokens before the patches of a model that does not say how many
# the convolution cutting the image into patches: timm, torchvision, Hugging Face
_PATCH_CONVS = ("patch_embed.proj", "conv_proj", "patch_embeddings.projection")
_TOKEN_PARAMS = ("cls_token", "class_token", "dist_token", "distillation_token")
_TOKEN_PARAMS += ("reg_token", "register_tokens")
_PATCH_CONV: weakref.WeakKeyDictionary[nn.Module, tuple[str, nn.Conv2d] | None] = (
    weakref.WeakKeyDictionary()
)


def _patch_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(name, module) of the convolution that cuts the image into patches (timm's
    ``patch_embed.proj``, torchvision's ``conv_proj``, Hugging Face's
    ``embeddings.patch_embeddings.projection``) when it is the model's first registered
    convolution, so that its input is the image (not a hybrid's, after a CNN); else None."""
    if model in _PATCH_CONV:
        return _PATCH_CONV[model]
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    ok = first is not None and any(
        first[0] == p or first[0].endswith(f".{p}") for p in _PATCH_CONVS
    )
    _PATCH_CONV[model] = first if ok else None
    return _PATCH_CONV[model]


def patch_grid(
    model: nn.Module, hw: Sequence[int] | None
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((rows, columns), (stride y, stride x)) of the patches the model's patch embedding
    (:func:`_patch_conv`) cuts an ``hw`` input into: timm's own rule when it has one (its
    ``dynamic_img_pad`` pads the input to whole patches), else the convolution's arithmetic.
    Without ``hw``, the size the model was built for (timm's ``grid_size``, torchvision's
    ``image_size``, Hugging Face's ``image_size``). None without a patch embedding."""
    found = _patch_conv(model)
    if found is None:
        return None
    name, conv = found
    embed = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    stride = (int(conv.stride[0]), int(conv.stride[1]))
    if hw is None:
        grid = getattr(embed, "grid_size", None)
        if grid:
            return (int(grid[0]), int(grid[1])), stride
        built = getattr(embed, "image_size", None) or getattr(model, "image_size", None)
        hw = (built, built) if isinstance(built, int) else built
        if not isinstance(hw, Sequence) or len(hw) != 2:
            return None
    size = (int(hw[0]), int(hw[1]))
    feat, patch = getattr(embed, "dynamic_feat_size", None), getattr(embed, "patch_size", None)
    if callable(feat) and patch:  # timm's PatchEmbed: ceil with dynamic_img_pad, else floor
        grid = feat(size)
        return (int(grid[0]), int(grid[1])), (int(patch[0]), int(patch[1]))
    if isinstance(conv.padding, str):
        if conv.padding != "valid":
            return None
        pad: Sequence[int] = (0, 0)
    else:
        pad = conv.padding
    k, d = conv.kernel_size, conv.dilation
    cells = [(size[i] + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
    return (cells[0], cells[1]), stride


def patch_stride(
    model: nn.Module, hw: Sequence[int], grid: Sequence[int]
) -> tuple[int, int] | None:
    """The patch embedding's stride when a map of ``grid`` on an ``hw`` input is its grid of
    patches (each map cell is then the input's patch at stride × position, from the top
    left); None otherwise (maps of other layers spread over the input)."""
    found = patch_grid(model, hw)
    if found is None or tuple(int(g) for g in grid) != found[0]:
        return None
    return found[1]


def _prefix_count(model: nn.Module) -> int | None:
    """How many tokens (class, distillation, register) come before the patches: timm's
    ``num_prefix_tokens``, else the token parameters beside the patch embedding (Hugging Face
    DeiT's ``cls_token`` and ``distillation_token``, torchvision's ``class_token``, DINOv2's
    ``register_tokens``), else a Hugging Face config's registers; None when nothing says."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    found = _patch_conv(model)
    parts = found[0].split(".")[:-1] if found is not None else []
    holders = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]  # nearest first
    for name in holders:
        holder = model.get_submodule(name) if name else model
        count = sum(
            int(p.shape[-2]) if p.dim() >= 2 else 1
            for pname, p in holder.named_parameters(recurse=False)
            if pname in _TOKEN_PARAMS
        )
        if count:
            return count
    registers = getattr(getattr(model, "config", None), "num_register_tokens", None)
    if isinstance(registers, int):  # Hugging Face DINOv2 with registers
        return 1 + registers
    return None


_PERMUTED: weakref.WeakKeyDictionary[nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()


def channels_last(model: nn.Module, layer: str = "", ndim: int = 4) -> bool:
    """Whether ``layer``'s 4-d output is N×H×W×C (``ndim=3``: its 3-d output N×L×C tokens,
    not N×C×L): as one dry forward of the model followed it (:mod:`netlens.channel_layout`),
    else by these rules. 3-d: tokens, unless the layer is a 1-d convolution, norm or pooling
    (a ``Conv1d``, an ``AdaptiveAvgPool1d`` pooling tokens to N×C×1). 4-d: a ``Linear``'s
    (ConvNeXt's pointwise layers, in any library); in a timm model whose stages keep channels
    last (``output_fmt`` NHWC) every layer but a convolution's; in a torchvision model whose
    ``Permute`` modules move channels last and back (Swin, ConvNeXt's blocks) the layers
    between them (:func:`_permuted_layers`)."""
    name = layer.split("@")[0].split(":")[0]
    learned = learned_layout(model, layer)  # one call's, when the module runs on both
    if learned is not None:  # followed through a dry forward (netlens.channel_layout)
        return learned
    try:
        module = model.get_submodule(name) if name else None
    except AttributeError:
        module = None
    if ndim == 3:
        return not isinstance(module, CHANNELS_FIRST)
    if isinstance(module, nn.Linear):  # it acts on the last axis: a 4-d output ends in channels
        return True
    if str(getattr(model, "output_fmt", "")).upper() == "NHWC":
        return not isinstance(module, nn.Conv2d)
    return bool(name) and name in _permuted_layers(model)


def _permuted_layers(model: nn.Module) -> frozenset[str]:
    """The modules of a torchvision model whose outputs are N×H×W×C: in the order they are
    registered (the order torchvision's Sequential stages run them), a ``Permute([0, 2, 3, 1])``
    moves channels last and a ``Permute([0, 3, 1, 2])`` back; a container's output is its last
    module's. Empty for models without torchvision's ``Permute``."""
    if model in _PERMUTED:
        return _PERMUTED[model]
    modules = list(model.named_modules())
    found: set[str] = set()
    if any(_is_tv_permute(m) for _, m in modules):
        last, leaves = False, {}
        for name, m in modules:
            if name and not m._modules:
                if _is_tv_permute(m):
                    dims = [int(d) for d in m.dims]
                    last = dims == [0, 2, 3, 1] or (last and dims != [0, 3, 1, 2])
                leaves[name] = last
        found = {n for n, nhwc in leaves.items() if nhwc}
        for name, _ in modules:
            under = [leaf for leaf in leaves if leaf.startswith(f"{name}.")] if name else []
            if under and leaves[under[-1]]:
                found.add(name)
    _PERMUTED[model] = frozenset(found)
    return _PERMUTED[model]


def _is_tv_permute(m: nn.Module) -> bool:
    return type(m).__name__ == "Permute" and type(m).__module__.startswith("torchvision.")


def tensor_output(out: Any, layer: str) -> torch.Tensor:
    """A layer's output, which must be one tensor; one line naming what it is otherwise."""
    if not isinstance(out, torch.Tensor):
        raise AnalyzerError(
            f"layer '{layer}' returns a {type(out).__name__}, not a tensor (nor a tuple whose "
            "first element is a float map or tokens, one per image); pick a module inside it "
            "(see `netlens layers MODEL`)"
        )
    return out


def to_spatial(
    t: torch.Tensor,
    model: nn.Module,
    layer: str = "",
    batch: int | None = None,
    hw: Sequence[int] | None = None,
) -> torch.Tensor:
    """An activation as N×C×H×W (a view or reshape; gradients flow through it).

    ``hw``: the input's height and width, which tell a token layer's patch grid when the model
    does not (a Hugging Face ViT on a 96×216 image: 12×27 patches, 324 tokens, not 18×18).
    Raises AnalyzerError with a one-line explanation when the layer has no spatial extent, or
    when its maps are not one per image of the ``batch`` that ran (window attention folds its
    windows into the batch: MaxViT, Swin's attention internals).
    """
    if t.is_quantized:  # a statically quantized model's layer: its values, as floats
        t = t.dequantize()
    custom = getattr(model, "netlens_reshape", None)
    s = custom(t, layer) if custom is not None else _spatial(t, model, layer, hw)
    if batch is not None and s.dim() == 4 and s.shape[0] != batch:
        raise AnalyzerError(
            f"layer '{layer}' gives {s.shape[0]} maps for {batch} image(s): it works on "
            f"windows or patches folded into the batch (window attention); {_around(model, layer)}"
        )
    return s


# layers of a Hugging Face block that run on its whole token grid (raster order) after its
# window attention: the normed stream after it, the MLP
_AFTER_ATTENTION = ("layernorm_after", "norm2", "mlp", "output")


def _around(model: nn.Module, layer: str) -> str:
    """Advice for a window-attention layer: a layer around it that gives one map per image.
    The block around it (the nearest numbered module above it; a Hugging Face block's tuple is
    explained by its first element, the hidden states), and for a Hugging Face block its layers
    after the attention on the whole grid (Swin's ``layernorm_after``)."""
    parts = layer.split("@")[0].split(":")[0].split(".")
    blocks = [i for i in range(len(parts) - 1) if parts[i].isdigit()]
    try:
        block_name = ".".join(parts[: blocks[-1] + 1]) if blocks else ""
        block = model.get_submodule(block_name) if block_name else None
    except AttributeError:
        block = None
    if block is None:
        return "pick the block or stage around it (see `netlens layers MODEL`)"
    if type(block).__module__.startswith("transformers."):
        children = dict(block.named_children())
        after = [n for n in _AFTER_ATTENTION if n in children]
        if after:
            names = " or ".join(f"'{block_name}.{n}'" for n in after[:2])
            return (
                f"pick the block around it, '{block_name}' (its hidden states), or a layer of "
                f"it on the whole grid: {names} (see `netlens layers MODEL`)"
            )
    return f"pick the block around it, '{block_name}' (see `netlens layers MODEL`)"


def _spatial(
    t: torch.Tensor, model: nn.Module, layer: str, hw: Sequence[int] | None = None
) -> torch.Tensor:
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2) if channels_last(model, layer) else t
    if t.dim() == 3:
        if not channels_last(model, layer, 3):
            raise AnalyzerError(
                f"layer '{layer}' gives N×C×L (channels × length: a 1-d convolution's, norm's "
                f"or pooling's output, {tuple(t.shape)}), not tokens of a patch grid; pick a "
                "layer with a 2-d map (see `netlens layers MODEL`)"
            )
        rolled = _rerolled(t, model, layer)
        if rolled is not None:
            return rolled
        n, length, d = t.shape
        layout = _token_layout(model, length, hw)
        if layout is None:
            raise AnalyzerError(
                f"layer '{layer}' gives {length} tokens that do not form a square patch grid; "
                "set model.netlens_reshape or pick another layer"
            )
        k, h, w = layout
        return t[:, k:, :].reshape(n, h, w, d).permute(0, 3, 1, 2)
    raise AnalyzerError(
        f"layer '{layer}' has no spatial extent (output shape {tuple(t.shape)}); pick a "
        "convolutional or transformer-block layer (see `netlens layers MODEL`)"
    )


def _rerolled(t: torch.Tensor, model: nn.Module, layer: str) -> torch.Tensor | None:
    """Hiera's tokens, which every stage but the last keeps in mask-unit ("unrolled") order, as
    N×C×H×W by the model's own reroll: timm's ``Reroll`` module (as its
    ``forward_intermediates`` does; a block's output in its own order, a layer inside it in the
    order of the block's output or input, whichever has as many tokens) and Hugging Face's
    ``HieraEncoder.reroll`` (as its ``reshaped_hidden_states``; by stage, the same way). None
    for other models and layers; a layer in an unrolled stage whose order matches neither is
    refused in one line (a reshape row by row would scramble it)."""
    name = layer.split("@")[0].split(":")[0]
    rerolls = [
        (name.removesuffix("reroll"), m)
        for name, m in model.named_modules()
        if name.endswith("reroll") and type(m).__name__ == "Reroll" and hasattr(m, "schedule")
    ]
    for prefix, reroll in rerolls:
        if name == f"{prefix}unroll":
            blocks = [0]
        elif name.startswith(f"{prefix}blocks."):
            i = name.removeprefix(f"{prefix}blocks.").split(".")[0]
            blocks = [int(i), int(i) - 1] if i.isdigit() else []
        else:
            continue
        for j in blocks:
            if j in reroll.schedule and math.prod(reroll.schedule[j][1]) == t.shape[1]:
                return reroll(t, j).permute(0, 3, 1, 2)
    for prefix, encoder in _hf_hiera_encoders(model):
        if not name.startswith(f"{prefix}stages."):
            continue
        i = name.removeprefix(f"{prefix}stages.").split(".")[0]
        stages = [int(i), int(i) - 1] if i.isdigit() else []
        schedule = encoder.schedule
        for j in stages:
            if j in schedule and math.prod(schedule[j][1]) == t.shape[1]:
                return encoder.reroll(t.contiguous(), stage_idx=j).permute(0, 3, 1, 2)
        if any(j in schedule and schedule[j][0] for j in stages):
            fits = " or ".join(str(math.prod(schedule[j][1])) for j in stages if j in schedule)
            raise AnalyzerError(
                f"layer '{layer}' gives {t.shape[1]} tokens in Hiera's mask-unit order, not "
                f"the {fits}"
                " its reroll puts back for the input size the model was built for; feed "
                "images of that size (its config's image_size)"
            )
    return None


def _hf_hiera_encoders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name prefix, module) of Hugging Face's ``HieraEncoder`` modules (their ``reroll``
    method and ``schedule``: stage → (unroll strides, grid))."""
    return [
        (f"{n}." if n else "", m)
        for n, m in model.named_modules()
        if type(m).__name__ == "HieraEncoder"
        and callable(getattr(m, "reroll", None))
        and isinstance(getattr(m, "schedule", None), dict)
    ]


def is_spatial(
    t: torch.Tensor, model: nn.Module, layer: str = "", hw: Sequence[int] | None = None
) -> bool:
    """True when :func:`to_spatial` gives a map larger than 1×1 (``hw``: the input's size)."""
    try:
        s = to_spatial(t, model, layer, hw=hw)
    except AnalyzerError:
        return False
    return s.shape[-1] * s.shape[-2] > 1
