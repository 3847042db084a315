"""The CAM template: check → capture → weights → combine → ReLU → upsample → normalise.

A CAM method is a :class:`CamMethod` subclass that supplies channel weights (N×C, or N×C×h×w
for element-wise methods such as Layer-CAM); everything else is done here once::

    class MyCam(CamMethod):
        \"\"\"Gradients squared, averaged per channel.\"\"\"

        def weights(self, ctx):
            return (ctx.grads**2).mean(dim=(2, 3))

and registered from a ``netlens_register_cam_methods`` hook: ``registry.add("mycam", MyCam)``.

Activations and gradients are captured with :func:`netlens.probe` and
``torch.autograd.grad`` (never into ``param.grad``) and brought to N×C×h×w by
:func:`netlens.activations.to_spatial`, so ViT tokens and Swin's NHWC stages need no reshape code.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import tensor_output, to_spatial
from ..errors import AnalyzerError, NetlensError, TargetError
from ..fresh_input import fresh
from ..layer_call import LayerCall
from ..layers import auto_layer, eval_mode
from ..layout import run_channels_last
from ..parallel import without_autograd
from ..probe_guards import eager
from ..probes import probe
from ..sigmoid_tap import tapped
from ..targets import Target, model_output

__all__ = [
    "CamContext",
    "CamMethod",
    "Capture",
    "cam_layer",
    "capture",
    "empty_regions",
    "normalize_maps",
    "upsample",
]

Logits = Callable[[torch.Tensor], torch.Tensor]

RAN_AGAIN = (
    "the target function '{name}' ran the model again (a forward inside the target): it must "
    "only read the output it is given (its first argument) and return one score per row"
)


@dataclass
class CamContext:
    """What a method sees for one layer and one set of targets.

    Attributes:
        model: the model (in eval mode while the method runs).
        x: the N×C×H×W input batch.
        layer: the layer's dotted name.
        acts: the layer's activations, N×C×h×w, detached.
        grads: d(score)/d(acts), N×C×h×w (None for gradient-free methods).
        targets: what is explained: a :class:`netlens.targets.Target` (one score per image).
        logits: the model's N×K logits for ``x``.
        forward: runs the model on a batch (no grad) and returns N×K logits.
        batch_size: how many masked inputs to run at once.
        raw: the layer's output in its own layout (tokens, NHWC), detached.
        cache: per-layer storage shared across targets (masked-pass scores, head weights).
        masked_forward: a faster forward for many passes that need no hooks (see
            :class:`InferenceForward`); None means ``forward``.
    """

    model: nn.Module
    x: torch.Tensor
    layer: str
    acts: torch.Tensor
    grads: torch.Tensor | None
    targets: Target
    logits: torch.Tensor
    forward: Logits
    batch_size: int = 32
    raw: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    masked_forward: Logits | None = None

    def score(self, outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The target score of each row of ``outputs`` (model outputs, one row per pass).

        ``rows[j]`` is the image (index into ``x``) that pass ``j`` belongs to, so per-image
        targets apply to masked or ablated copies of that image. Every method that scores
        extra forward passes goes through here.
        """
        return self.targets(outputs, rows)

    def __post_init__(self) -> None:  # a final sigmoid read on its input z (sigmoid_tap)
        self.forward = tapped(self.forward)

    def many(self, passes: int) -> Logits:
        """The forward for ``passes`` no-grad passes that need no hooks (masked inputs)."""
        fwd = self.masked_forward
        if fwd is None:
            return self.forward
        if isinstance(fwd, InferenceForward):
            fwd.prepare(passes, self.x[:2])
        return tapped(fwd)


class CamMethod(ABC):
    """Base class of CAM methods: subclasses supply :meth:`weights`.

    ``needs_grads = False`` skips the backward pass (Eigen-CAM, Score-CAM, Ablation-CAM, CAM).
    Override :meth:`check` to refuse layers the method cannot explain, and :meth:`combine` for
    maps that are not a weighted sum of the activations.
    """

    name: ClassVar[str] = ""
    needs_grads: ClassVar[bool] = True

    def check(self, ctx: CamContext) -> None:
        """Raise :class:`~netlens.errors.AnalyzerError` when the method cannot run here."""
        return None  # by default every layer with a spatial output is fine

    @abstractmethod
    def weights(self, ctx: CamContext) -> torch.Tensor:
        """Channel weights: N×C (one per channel) or N×C×h×w (one per element)."""

    def combine(self, ctx: CamContext, weights: torch.Tensor) -> torch.Tensor:
        """The low-resolution N×h×w map: the weighted sum of the activation channels."""
        w = weights if weights.dim() == 4 else weights[:, :, None, None]
        return (w * ctx.acts).sum(dim=1)

    def __call__(self, ctx: CamContext) -> torch.Tensor:
        """The N×H×W map at input resolution, in [0, 1]; 0 for an image whose target is an
        empty region (a class predicted nowhere): nothing there to explain, whatever the
        method (Eigen-CAM, which does not read the target, drew its map).

        A half-precision model's activations and gradients are combined in float32: sums over
        a map (Grad-CAM++'s α) and Eigen-CAM's projections overflow float16's 65504 where the
        activations themselves do not."""
        self.check(ctx)
        if ctx.acts.dtype in (torch.float16, torch.bfloat16):
            grads = None if ctx.grads is None else ctx.grads.float()
            ctx = replace(ctx, acts=ctx.acts.float(), grads=grads)
        with torch.no_grad():
            weights = self.weights(ctx)
            low = self.combine(ctx, weights).float()
            if weights.dim() == 4 and type(self).combine is CamMethod.combine:
                low = _without_cancelled(self.name, ctx, weights, low)
            empty = empty_regions(ctx.targets, len(low)).to(low.device)
            low = low.masked_fill(empty[:, None, None], 0)
            size, stride = tuple(ctx.x.shape[-2:]), grid_stride(ctx, low.shape[-2:])
            return normalize_maps(upsample(torch.relu(low), size, stride))


def _without_cancelled(
    method: str, ctx: CamContext, weights: torch.Tensor, low: torch.Tensor
) -> torch.Tensor:
    """``low`` with the maps of images whose per-element terms (weight × activation) cancel
    over the channels at every position set to 0, and a warning: what is left is rounding
    noise that normalisation would blow up to a full-range map. A layer whose output feeds a
    LayerNorm over its channels (a Swin stage before the final ``norm``) has, at each
    position, a gradient orthogonal to its output, so HiResCAM's sum is 0 there."""
    terms = (weights.float() * ctx.acts.float()).abs().sum(dim=1).flatten(1).amax(dim=1)
    cancelled = (low.abs().flatten(1).amax(dim=1) <= 1e-3 * terms) & (terms > 0)
    if not bool(cancelled.any()):
        return low
    import warnings

    from ..errors import NetlensWarning

    warnings.warn(
        f"{method} at layer '{ctx.layer}': gradient × activation cancels over the channels at "
        f"every position for {int(cancelled.sum())} of {len(low)} images (the sum is under "
        "0.1 % of its terms: the layer feeds a normalisation over channels, such as a "
        "LayerNorm), so their maps are drawn empty; pick the norm's output or another layer "
        "(--layer), or use gradcam",
        NetlensWarning,
        stacklevel=2,
    )
    return low.masked_fill(cancelled[:, None, None].to(low.device), 0)


def empty_regions(target: Target, n: int) -> torch.Tensor:
    """``n`` bools: whether each image's target is a region with no pixel (all False for
    other targets)."""
    masks = getattr(target, "masks", None)
    if target.kind != "region" or not isinstance(masks, torch.Tensor) or len(masks) != n:
        return torch.zeros(n, dtype=torch.bool)
    return ~masks.flatten(1).any(dim=1).cpu()


# -- small helpers ---------------------------------------------------------------------------
def upsample(
    maps: torch.Tensor, size: tuple[int, ...], stride: tuple[int, int] | None = None
) -> torch.Tensor:
    """N×h×w (or N×C×h×w) maps resized bilinearly to ``size`` (as captum's ``interpolate``).

    With ``stride`` (a ViT's patch grid that covers more than the input: timm's
    ``dynamic_img_pad`` pads at the bottom and right), the map is resized to the grid's own
    h·stride × w·stride pixels and cut to ``size``, so each cell lies on its own patch rather
    than stretched over the unpadded image."""
    squeeze = maps.dim() == 3
    grid = maps[:, None] if squeeze else maps
    target = tuple(size)
    if stride is not None:
        target = (grid.shape[-2] * int(stride[0]), grid.shape[-1] * int(stride[1]))
    out = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
    if target != tuple(size):
        out = out[..., : size[0], : size[1]]
        pad = (0, max(0, size[1] - out.shape[-1]), 0, max(0, size[0] - out.shape[-2]))
        out = F.pad(out, pad) if any(pad) else out
    return out[:, 0] if squeeze else out


def grid_stride(ctx: CamContext, grid: Sequence[int]) -> tuple[int, int] | None:
    """The patch stride when ``grid`` is a patch grid that does not tile the input exactly
    (padded); None otherwise (the plain resize is then the same)."""
    from ..activations import patch_stride

    hw = tuple(ctx.x.shape[-2:])
    stride = patch_stride(ctx.model, hw, tuple(grid))
    if stride is None or (grid[0] * stride[0], grid[1] * stride[1]) == hw:
        return None
    return stride


def normalize_maps(maps: torch.Tensor, rel_eps: float = 1e-5) -> torch.Tensor:
    """Min-max normalise each map (over its last two dims) to [0, 1].

    A map whose range is below ``rel_eps`` of its magnitude is constant up to float rounding
    and gives 0 everywhere (never NaN, never amplified noise). The test is relative only (a
    floor at the dtype's smallest normal number aside): a model whose outputs are tiny (a
    regression head in SI units, logits over a huge temperature) has tiny gradients and maps
    of the same shape, not flat ones.
    """
    flat = maps.flatten(-2)
    lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)
    span = hi - lo
    tiny = torch.finfo(flat.dtype).tiny if flat.is_floating_point() else 0.0
    live = span > rel_eps * torch.maximum(hi.abs(), lo.abs()) + tiny
    out = (flat - lo).div_(torch.where(live, span, torch.inf))  # a constant map: (≥ 0) / inf = 0
    return out.nan_to_num_(nan=0.0).reshape(maps.shape)


class InferenceForward:
    """Many forward passes in inference mode: on a copy of the model with conv+BN folded,
    channels-last (inputs and weights). Safe to call from several threads once prepared.

    ``prepare(passes, example)`` makes the copy (``torch.fx.experimental.optimization.fuse``;
    the user's model is not touched) when at least ``min_passes`` inputs will be run, as
    tracing costs about as much as a few passes. A model fx cannot trace, with no BatchNorm to
    fold, or whose copy gives other logits, is run as is.

    Measured and not taken (timm resnet18, 2 cores, one image, batches of 32):

    - racing this copy against a oneDNN-layout copy (``optimize_for_inference``) and
      one-call-on-all-threads batches on the first real batches: 15 % faster at 96² on a quiet
      machine, 8-25 % slower beside a CPU hog (the losing candidates' batches and the oneDNN
      copy's making cost more than the winner saved);
    - the oneDNN copy alone when the passes are long: 5 % faster at 96²; 4-10 % slower at 224²,
      where its batches were no faster (0.47 s against 0.46 s per 16 masked inputs on one
      thread) and making and timing it cost 0.3 s more.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Logits,
        min_passes: int = 128,
        pick: Callable[[Any], torch.Tensor] = model_output,
    ) -> None:
        self.model, self.forward, self.min_passes, self.pick = model, forward, min_passes, pick
        self._fast: nn.Module | None = None
        self._tried = False

    def prepare(self, passes: int, example: torch.Tensor) -> None:
        if not self._tried and passes >= self.min_passes:
            self._tried = True
            self._fast = _fused_copy(self.model, example, self.forward, self.pick)

    @property
    def fused(self) -> bool:
        """Whether passes run on the traced copy (which keeps no state between calls)."""
        return self._fast is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._fast
        run = self.forward if fast is None else (lambda t: self.pick(fast.forward(fresh(t))))
        return without_autograd(self.model, lambda: run_channels_last(self.model, run, x))


def _fused_copy(
    model: nn.Module, x: torch.Tensor, forward: Logits, pick: Callable[[Any], torch.Tensor]
) -> nn.Module | None:
    """The conv+BN-folded copy, when it gives ``forward``'s output (``pick`` takes that out of
    whatever the copy returns: a dict, tuple or object).

    Its weights are made channels-last (13-18 % less CPU at 96²), or kept in standard layout
    for a model whose forward needs it (a hand-written ``x.view(n, -1)`` fails on the
    channels-last activations such weights give, whatever the input's layout). The copy is
    called through its ``forward``: a failing ``GraphModule.__call__`` prints fx's traceback
    to stderr before raising.
    """
    try:
        from ..fx_trace import fuse  # torch's, traced so other threads' forwards run as usual

        fast = fuse(model)  # a traced deep copy; the model itself is left alone
        if _batch_norms(fast) == _batch_norms(model):
            return None  # nothing folded (Swin, ViT): the copy runs no faster than the model
        with torch.no_grad():
            ref = forward(x)
    except Exception:  # noqa: BLE001 - not traceable: run the model as is
        return None
    tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
    for layout in (torch.channels_last, torch.contiguous_format):
        try:
            _weights_to(fast, layout)
            with torch.no_grad():
                got = run_channels_last(model, lambda t: pick(fast.forward(fresh(t))), x)
        except Exception:  # noqa: BLE001 - this layout does not run: try the next, or none
            continue
        if got.shape == ref.shape and bool((got - ref).abs().max() <= tol):
            return fast
    return None


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _weights_to(module: nn.Module, layout: torch.memory_format) -> None:
    """The 4-d parameters and buffers of ``module`` in ``layout`` (``Module.to`` refuses a
    module holding a tensor of another rank, as Swin's 5-d attention mask)."""
    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=layout)


def spatial_channel_view(
    raw: torch.Tensor, model: nn.Module, layer: str, hw: Sequence[int] | None = None
) -> torch.Tensor:
    """``to_spatial`` of ``raw`` that must share its memory (so writes reach ``raw``)."""
    view = to_spatial(raw, model, layer, hw=hw)
    if view.untyped_storage().data_ptr() != raw.untyped_storage().data_ptr():
        raise AnalyzerError(
            f"layer '{layer}': the reshape to N×C×H×W copies data, so channels cannot be "
            "ablated in place; pick a convolutional layer or a transformer block"
        )
    return view


# -- layers ----------------------------------------------------------------------------------
def cam_layer(
    model: nn.Module, example: torch.Tensor | None = None, output: str | int | None = None
) -> LayerCall:
    """The layer call ``auto`` means for CAMs.

    CNNs and NHWC stages (Swin): the call whose output is the spatial map feeding the head, as
    the head reads it (:func:`netlens.layers.auto_layer`: after in-place activations, with
    ``@k`` for a module that runs several times and ``:consumed`` where the in-place rewrite
    happens outside any module). Token models (timm ViT): the last transformer block whose
    tokens form a patch grid; with class-token pooling its first LayerNorm (timm's ``norm1``,
    torchvision's ``ln_1``), since the block's own output reaches the logits only through the
    class token and so has no gradient on the patch tokens.
    """
    layer = auto_layer(model, example, output)  # one dry forward; ViT → its last block
    if layer.call is not None or layer.consumed or not _pools_class_token(model, layer, example):
        return layer
    block = dict(model.named_modules()).get(layer.name)
    norm = next(
        (n for n, m in block.named_children() if isinstance(m, nn.LayerNorm)) if block else None,
        None,
    )
    if norm:
        return LayerCall(f"{layer.name}.{norm}")
    earlier = _norm_before(model, layer.name, example) if example is not None else None
    return LayerCall(earlier) if earlier else layer


def _norm_before(model: nn.Module, name: str, example: torch.Tensor) -> str | None:
    """The last LayerNorm called before ``name`` whose patch tokens reach the output (the
    last block's first norm), for a class-token model whose ``auto`` layer is its final norm:
    its blocks are not seen as a stack (a 1-block ViT, blocks returning tuples), and the final
    norm's patch tokens get no gradient (every map would be zero)."""
    from ..layers import trace_calls

    try:
        order = [c.name for c in trace_calls(model, example[:1])]
    except NetlensError:
        return None
    mods = dict(model.named_modules())
    before = order[: order.index(name)] if name in order else []
    norms = [n for n in reversed(before) if isinstance(mods.get(n), nn.LayerNorm)]
    for candidate in list(dict.fromkeys(norms))[:4]:  # a block's norms: the last few calls
        if _tokens_reaching_output(model, candidate, example[:1]) > 2:
            return candidate
    return None


def _pools_class_token(model: nn.Module, layer: LayerCall, example: torch.Tensor | None) -> bool:
    """The head reads the class token only: timm's ``global_pool="token"``; torchvision's
    ``VisionTransformer`` (a ``class_token`` and no other pooling); any other model (Hugging
    Face's ViT and DeiT) when, on ``example``, the gradient of its output reaches no more than
    two of the layer's tokens (the class and distillation tokens)."""
    pool = getattr(model, "global_pool", None)
    if pool is not None:
        return str(pool) == "token"
    if isinstance(getattr(model, "class_token", None), nn.Parameter):
        return True
    if example is None:
        return False
    known = _POOLS_CLASS_TOKEN.setdefault(model, {})  # once per model and layer: a backward
    if layer.name not in known:
        known[layer.name] = _tokens_reaching_output(model, layer.name, example[:1]) <= 2
    return known[layer.name]


_POOLS_CLASS_TOKEN: weakref.WeakKeyDictionary[nn.Module, dict[str, bool]] = (
    weakref.WeakKeyDictionary()
)


def _tokens_reaching_output(model: nn.Module, name: str, x: torch.Tensor) -> int:
    """How many tokens of ``name``'s N×T×D output the model's output depends on (T when the
    output is not tokens, or anything fails: then nothing is concluded)."""
    module = dict(model.named_modules()).get(name)
    seen: list[torch.Tensor] = []

    def hook(mod: nn.Module, inputs: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.dim() == 3 and output.is_floating_point():
            leaf = output.detach().requires_grad_(True)
            seen.append(leaf)
            return leaf
        return None

    if module is None:
        return 1 << 30
    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad(), eval_mode(model):
            out = model_output(model(fresh(x))).float()
            if len(seen) != 1 or seen[0].shape[1] <= 4 or not out.requires_grad:
                return 1 << 30
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            (grad,) = torch.autograd.grad((out * weights.to(out.device)).sum(), seen[0])
    except Exception:  # noqa: BLE001 - a model this check cannot run: keep the block
        return 1 << 30
    finally:
        handle.remove()
    return int((grad[0].abs().sum(dim=-1) > 0).sum())


# -- capture ---------------------------------------------------------------------------------
@dataclass
class Capture:
    """One forward (and a backward per target set) through the probed layers."""

    logits: torch.Tensor
    acts: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]
    grads: list[dict[str, torch.Tensor]]
    first: frozenset[str] = frozenset()  # layers returning a tuple: their first element kept


def capture(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    forward: Logits,
    choose_targets: Callable[[torch.Tensor], list[Target]],
    *,
    grads: bool = True,
) -> tuple[Capture, list[Target]]:
    """Run ``forward`` once with ``layers`` probed; one gradient pass per target set.

    ``choose_targets(output)`` returns target sets (:class:`netlens.targets.Target`, one score
    per image); for each, the summed score is differentiated w.r.t. the activations with
    ``torch.autograd.grad`` (the model's ``.grad`` stays untouched).

    ``layers`` are selections (:class:`~netlens.layers.LayerCall` or strings such as ``act@1``
    and ``features:consumed``). The layers before the first probed call run without autograd
    (less memory and time): a hook on each probed module turns gradients on from the selected
    call's output onwards; leaving ``no_grad`` restores the mode.
    """
    modules = dict(model.named_modules())
    calls = [LayerCall.parse(n) for n in layers]
    with probe(model, calls, grads=grads, first_of_tuple=True) as p, torch.no_grad():

        def attempt(batch: torch.Tensor) -> torch.Tensor:
            handles = [
                modules[c.name].register_forward_hook(_grads_from(c), prepend=True)
                for c in calls
                if grads
            ]
            try:
                return tapped(forward)(batch)  # a final sigmoid read on its input z
            finally:
                for h in handles:
                    h.remove()

        def again() -> None:  # a refused channels-last forward: forget what it captured
            p.clear()
            torch.set_grad_enabled(False)

        logits = run_channels_last(model, attempt, x, again=again)
        sets = choose_targets(logits.detach())
        outs = {n: tensor_output(p[n].output, n) for n in layers}
        grad_sets: list[dict[str, torch.Tensor]] = []
        if grads:
            for k, target in enumerate(sets):
                seen = p.forwards
                score = target(logits).sum()
                if p.forwards != seen:  # the model ran inside the target: not its output
                    raise TargetError(RAN_AGAIN.format(name=target.describe(0)))
                if score.requires_grad:
                    p.compute_grads(score, retain_graph=k < len(sets) - 1)
                _check_reached(layers, [p[n].grad for n in layers])
                grads_now = {n: _spatial_grad(p[n].grad, model, n, x.shape[-2:]) for n in layers}
                grad_sets.append(grads_now)
    acts = {n: to_spatial(outs[n].detach(), model, n, len(x), x.shape[-2:]) for n in layers}
    raw = {n: outs[n].detach() for n in layers}
    first = frozenset(n for n in layers if p[n].first)
    return Capture(logits.detach(), acts, raw, grad_sets, first), sets


def _grads_from(layer: LayerCall) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook that turns gradients on from the selected call on (the first call for
    ``@-k``, whose position is known only when the forward ends)."""
    first = layer.call if layer.call is not None and layer.call >= 0 else 0
    seen = [0]

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if seen[0] >= first:
            torch.set_grad_enabled(True)
        seen[0] += 1

    return eager(hook)  # another thread's forward of the model (a server's) is left alone


def _check_reached(layers: Sequence[str], grads: Sequence[torch.Tensor | None]) -> None:
    """Refuse a gradient method when no gradient flows from the output back to a layer: its
    maps would be zero everywhere, which reads as "nothing mattered" rather than "not
    computable"."""
    from ..probe_capture import UNREACHED  # the probe's words, where its .grad is read

    missing = [str(n) for n, g in zip(layers, grads, strict=True) if g is None]
    if missing:
        raise AnalyzerError(UNREACHED.format(name=missing[0]))


def _spatial_grad(
    g: torch.Tensor | None, model: nn.Module, layer: str, hw: tuple[int, ...]
) -> torch.Tensor:
    assert g is not None  # _check_reached refused the run otherwise
    return to_spatial(g.detach(), model, layer, hw=hw)
