"""The built-in CAM methods; each supplies its channel weights to :class:`CamMethod`.

References: CAM (Zhou et al. 2016), Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay
et al. 2018), XGrad-CAM (Fu et al. 2020), Layer-CAM (Jiang et al. 2021), HiResCAM (Draelos &
Carin 2020), Score-CAM (Wang et al. 2020), Eigen-CAM (Muhammad & Yeasin 2020), Ablation-CAM
(Desai & Ramaswamy 2020). Each class names the implementation it is tested against and any
deliberate difference; ``tests/test_cam_parity.py`` checks every method that pytorch-grad-cam
also has (Pearson r >= 0.999 on a resnet18 and real photos).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch
from torch import nn

from ..call_hooks import hook_call
from ..errors import AnalyzerError, NetlensWarning
from ..layer_call import LayerCall
from ..layers import trace_calls
from ..parallel import map_batches, one_thread_per_op, without_autograd
from .cam_base import (
    CamContext,
    CamMethod,
    InferenceForward,
    empty_regions,
    grid_stride,
    normalize_maps,
    spatial_channel_view,
    upsample,
)

__all__ = [
    "METHODS",
    "AblationCam",
    "Cam",
    "EigenCam",
    "GradCam",
    "GradCamPP",
    "HiResCam",
    "LayerCam",
    "ScoreCam",
    "XGradCam",
]

_EPS = 1e-7


class GradCam(CamMethod):
    """Grad-CAM: channels weighted by their spatially averaged gradient.

    Reference implementations: captum's ``LayerGradCam`` (equal to 1e-5 in the tests),
    pytorch-grad-cam's ``GradCAM`` and torchcam's ``GradCAM``; no deliberate difference.
    """

    name = "gradcam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return ctx.grads.mean(dim=(2, 3))


class GradCamPP(CamMethod):
    """Grad-CAM++: positive gradients weighted by second/third-order terms (paper, eq. 19).

    Reference implementation: pytorch-grad-cam's ``GradCAMPlusPlus``. Deliberate difference:
    ``alpha = g² / (2g² + ΣA·g³)`` is computed as the exact ``1 / (2 + ΣA·g)`` where ``g ≠ 0``;
    pytorch-grad-cam adds 1e-6 to the denominator, which is not small next to ``g²`` when
    gradients are about 1e-3 or less (it then shrinks the weights of weak channels unevenly).
    """

    name = "gradcam++"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        # alpha = g² / (2g² + ΣA·g³) = 1 / (2 + ΣA·g) where g ≠ 0: exact, no eps to tune.
        g = ctx.grads
        denom = 2 + ctx.acts.sum(dim=(2, 3), keepdim=True) * g
        ok = (g != 0) & (denom != 0)
        alpha = torch.where(ok, 1 / torch.where(ok, denom, 1), 0)
        return (alpha * torch.relu(g)).sum(dim=(2, 3))


class XGradCam(CamMethod):
    """XGrad-CAM: gradients averaged with the activations as weights.

    Reference implementation: pytorch-grad-cam's ``XGradCAM`` (the same 1e-7 in the
    denominator); no deliberate difference.
    """

    name = "xgradcam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        a = ctx.acts
        return (ctx.grads * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + _EPS)


class LayerCam(CamMethod):
    """Layer-CAM: every activation weighted by its own positive gradient.

    Reference implementation: pytorch-grad-cam's ``LayerCAM``; no deliberate difference.
    """

    name = "layercam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return torch.relu(ctx.grads)


class HiResCam(CamMethod):
    """HiResCAM: element-wise gradient × activation, summed over channels.

    Reference implementation: pytorch-grad-cam's ``HiResCAM``; no deliberate difference.
    """

    name = "hirescam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return ctx.grads


class EigenCam(CamMethod):
    """Eigen-CAM: the activations, centred, projected on their first principal direction.

    Reference implementation: pytorch-grad-cam's ``EigenCAM`` (``get_2d_projection``): each
    image's h·w × C activation matrix is centred per channel before the SVD, as there and in
    the other implementations of the field. Deliberate difference: the SVD's sign is arbitrary
    (whatever LAPACK returns, in pytorch-grad-cam), so the sign is fixed as Seg-Eigen-CAM does
    (pytorch-grad-cam's ``get_2d_projection_with_sign_correction``): the projection's largest
    magnitude is positive. Uncentred, the first direction mostly follows the mean activation;
    on the shapes zoo model the centred map puts 65 % of its mass on the object against 55 %.
    """

    name = "eigencam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return torch.ones(ctx.acts.shape[:2], dtype=ctx.acts.dtype, device=ctx.acts.device)

    def combine(self, ctx: CamContext, weights: torch.Tensor) -> torch.Tensor:
        n, c, h, w = ctx.acts.shape
        a = ctx.acts.double().flatten(2).transpose(1, 2)  # N × hw × C
        a = a - a.mean(dim=1, keepdim=True)
        v = torch.linalg.svd(a, full_matrices=False).Vh[:, 0, :]  # N × C
        proj = (a @ v[:, :, None])[..., 0]  # N × hw
        flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return proj.reshape(n, h, w).to(ctx.acts.dtype)


class _SaysWhyEmpty:
    """For gradient-free methods: a warning saying why when a map is empty everywhere."""

    name: str

    def combine(self, ctx: CamContext, weights: torch.Tensor) -> torch.Tensor:
        low = super().combine(ctx, weights)  # type: ignore[misc]
        _explain_empty(self.name, ctx, weights, low)
        return low


class ScoreCam(_SaysWhyEmpty, CamMethod):
    """Score-CAM: channels weighted by the class score of the input masked by each channel.

    As in the paper (Algorithm 1), pytorch-grad-cam's ``ScoreCAM`` and torchcam's ``ScoreCAM``,
    the weights are the softmax over channels of the target score of each masked input. Each
    mask is the channel's map upsampled bilinearly (half-pixel centres, ``align_corners=False``)
    and then min-max normalised, as in the authors' code (haofanwang/Score-CAM). Deliberate
    differences: pytorch-grad-cam upsamples with ``align_corners=True`` (which shifts the mask
    against the image by up to half a feature cell, and against its own final map, which it
    resizes with half-pixel centres), and torchcam normalises before upsampling; on a 7×7 layer
    either gives visibly different masks, and the softmax over channels amplifies that.

    Every distinct mask is run once: channels whose masks are equal (all-zero channels,
    copies, maps equal up to a power-of-two scale) share one pass, a constant map's empty mask is
    run once for all images, and the scores of every class are kept, so further targets
    (``top=K``) need no pass. A dense (segmentation) output is scored as each batch of passes
    returns: keeping every pass's K×H×W map would take gigabytes (960 channels of a
    DeepLabV3 at 520² would be 21 GB).
    """

    name = "scorecam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        if ctx.logits.dim() > 2:
            scores = _masked_logits(ctx, scored=True)
        else:
            logits = ctx.cache.get("scorecam")
            if logits is None:
                logits = ctx.cache["scorecam"] = _masked_logits(ctx)
            n, c = logits.shape[:2]
            rows = torch.arange(n, device=logits.device).repeat_interleave(c)
            scores = ctx.score(logits.flatten(0, 1), rows).reshape(n, c)
        return torch.softmax(scores.float(), dim=1).to(ctx.acts.dtype)


def _explain_empty(method: str, ctx: CamContext, weights: torch.Tensor, low: torch.Tensor) -> None:
    """A warning when some images' maps are at or below zero everywhere (so the final ReLU
    leaves them empty) although the layer is not: the algorithm's answer, as in any reference
    implementation, but one to explain. Score-CAM's weights are positive, so its map is empty
    only where the layer's activations are signed (a hardswish, a norm before its ReLU: timm's
    random ``mobilenetv3_small_100`` at ``blocks``) and sum below zero; Ablation-CAM's also
    when zeroing any channel raises the target's score (every weight ≤ 0)."""
    live = ctx.acts.flatten(1).ne(0).any(dim=1) & ~empty_regions(ctx.targets, len(low)).to(
        low.device
    )
    dead = (low.flatten(1).amax(dim=1) <= 0) & live
    if not bool(dead.any()):
        return
    rises = dead & (weights.flatten(1).amax(dim=1) <= 0)
    why = {
        "zeroing any of the layer's channels raises the target's score or leaves it (every "
        "weight is ≤ 0): the layer holds no evidence for the target here; pick another target "
        "or layer (--layer NAME), or use gradcam": int(rises.sum()),
        "the layer's activations are signed (a hardswish or GELU, or a norm before its ReLU) "
        "and their weighted sum is negative at every position, which the final ReLU zeroes; "
        "pick a layer after a ReLU (--layer NAME), or use gradcam": int((dead & ~rises).sum()),
    }
    for reason, k in why.items():
        if k:
            warnings.warn(
                f"{method} at layer '{ctx.layer}': the map is zero everywhere for {k} of "
                f"{len(low)} images: {reason}",
                NetlensWarning,
                stacklevel=3,
            )


def _score_masks(ctx: CamContext, pairs: torch.Tensor) -> torch.Tensor:
    """Score-CAM's masks for ``pairs`` (rows of image, channel): upsampled, then normalised.

    Bit for bit the plain algorithm's masks (one ``F.interpolate`` per map). Faster resizings
    (two matrix products, channels as one image) differ by 1e-7, which an ill-conditioned model
    turns into other scores: a random timm ``convnext_atto``, whose LayerNorm after nearly
    empty patches amplifies the difference, moved its maps by up to 0.9.
    """
    maps = ctx.acts[pairs[:, 0], pairs[:, 1]].float()
    stride = grid_stride(ctx, maps.shape[-2:])
    return normalize_maps(upsample(maps, tuple(ctx.x.shape[-2:]), stride))


def _distinct_masks(ctx: CamContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, channel) pairs whose masks are distinct, and each pair's row among them.

    Rows are -1 for empty masks. Candidates are found at the layer's resolution, at no cost:
    upsampling is linear, injective and keeps constants, so two masks can be equal only where
    the maps are equal after min-max normalisation there (compared exactly, within each image),
    and a map constant there gives an empty mask. Channels sharing such a map are then compared
    by their masks, bit for bit (maps equal there can give masks a rounding apart).
    """
    n, c = ctx.acts.shape[:2]
    low = normalize_maps(ctx.acts.float()).flatten(2).cpu()  # N × C × h·w
    live = low.ne(0).any(dim=2)
    group = torch.full((n, c), -1, dtype=torch.long)
    shared = torch.zeros(n, c, dtype=torch.bool)
    for i in range(n):
        channels = live[i].nonzero()[:, 0]
        if len(channels):
            which = torch.unique(low[i, channels], dim=0, return_inverse=True)[1]
            group[i, channels] = which
            shared[i, channels] = torch.bincount(which)[which] > 1
    digest: dict[tuple[int, int], bytes] = {}
    candidates = shared.nonzero()
    for start in range(0, len(candidates), ctx.batch_size):
        part = candidates[start : start + ctx.batch_size]
        masks = _score_masks(ctx, part.to(ctx.acts.device)).cpu().numpy()
        for (i, k), mask in zip(part.tolist(), masks, strict=True):
            digest[i, k] = hashlib.blake2b(mask.tobytes(), digest_size=16).digest()
    rows = torch.full((n, c), -1, dtype=torch.long)
    first: dict[tuple[int, int, bytes], int] = {}
    keep: list[tuple[int, int]] = []
    groups = group.tolist()
    for i, k in live.nonzero().tolist():
        key = (i, groups[i][k], digest.get((i, k), b""))
        if key not in first:
            first[key] = len(keep)
            keep.append((i, k))
        rows[i, k] = first[key]
    pairs = torch.tensor(keep, dtype=torch.long).reshape(-1, 2)
    return pairs.to(ctx.x.device), rows


def _masked_logits(ctx: CamContext, scored: bool = False) -> torch.Tensor:
    """N×C×K logits of the input masked by each channel's mask, one pass per distinct mask
    (``scored``: the N×C target scores instead, each batch's outputs scored as they come).

    The passes run in batches on threads of their own (:mod:`netlens.parallel`), together at
    most ``batch_size`` masked inputs at a time.
    """
    unique, rows = _distinct_masks(ctx)
    n = len(ctx.x)
    with one_thread_per_op() as workers:
        forward = ctx.many(len(unique))
        size = max(1, -(-ctx.batch_size // max(1, workers)))

        def batch(start: int) -> torch.Tensor:
            pairs = unique[start : start + size]
            masks = _score_masks(ctx, pairs)
            out = forward(ctx.x[pairs[:, 0]] * masks[:, None].to(ctx.x.dtype)).float()
            return ctx.score(out, pairs[:, 0]) if scored else out

        def run(start: int) -> torch.Tensor:
            return without_autograd(ctx.model, lambda: batch(start))

        stateless = isinstance(forward, InferenceForward) and forward.fused  # a traced copy
        watch = None if stateless else ctx.model  # the user's model: it may keep state
        parts = map_batches(run, range(0, len(unique), size), workers, model=watch)
        if bool((rows < 0).any()):  # the empty mask, the same for every image

            def blank() -> torch.Tensor:
                empty = forward(torch.zeros_like(ctx.x[:1])).float()
                if scored:  # ... scored for each image's own target, after the others
                    every_image = torch.arange(n, device=empty.device)
                    empty = ctx.score(empty.expand(n, *empty.shape[1:]), every_image)
                return empty

            parts.append(without_autograd(ctx.model, blank))
    if scored:
        out = torch.cat(parts) if parts else ctx.logits.new_empty(0)
        every = rows + (rows < 0) * (len(unique) + 1 + torch.arange(n)[:, None])
        return out[every.to(out.device)]  # row -1 + len + 1 + i: image i's empty-mask score
    out = torch.cat(parts) if parts else ctx.logits.new_empty(0, ctx.logits.shape[1])
    return out[rows.to(out.device)]  # row -1 is the empty mask's (when there is one)


class AblationCam(_SaysWhyEmpty, CamMethod):
    """Ablation-CAM: channels weighted by the relative drop of the class score when zeroed.

    Reference implementation: pytorch-grad-cam's ``AblationCAM`` (weights
    ``(y − y_k) / y``). Deliberate difference: the denominator is ``|y| + 1e-7``, since a
    negative target logit would otherwise flip the whole map. A channel that is already all
    zero is not run: zeroing it changes nothing, so its logits are the image's own. A dense
    (segmentation) output is scored batch by batch, as in :class:`ScoreCam`.
    """

    name = "ablationcam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        n, c = ctx.acts.shape[:2]
        rows = torch.arange(n, device=ctx.logits.device)
        base = ctx.score(ctx.logits, rows)[:, None]
        if ctx.logits.dim() > 2:
            ablated = _ablated_logits(ctx, scored=True)
        else:
            drops = ctx.cache.get("ablation")
            if drops is None:
                drops = ctx.cache["ablation"] = _ablated_logits(ctx)  # N × C × K
            ablated = ctx.score(drops.flatten(0, 1), rows.repeat_interleave(c)).reshape(n, c)
        # |y_c| rather than y_c: a negative logit would otherwise flip the whole map.
        return ((base - ablated) / (base.abs() + _EPS)).to(ctx.acts.dtype)


def _ablated_logits(ctx: CamContext, scored: bool = False) -> torch.Tensor:
    """N×C×K logits with each channel of the layer zeroed in turn (all-zero channels: none);
    ``scored``: the N×C target scores instead, each batch scored as it comes."""
    if ctx.raw is None:
        raise AnalyzerError("Ablation-CAM needs the layer's raw output")
    n, c = ctx.acts.shape[:2]
    logits = ctx.logits.float()
    if scored:
        out = ctx.score(logits, torch.arange(n, device=logits.device))[:, None].repeat(1, c)
    else:
        out = logits[:, None, :].repeat(1, c, 1)
    live = ctx.acts.flatten(2).ne(0).any(dim=2).cpu()  # N × C

    def passes() -> torch.Tensor:
        for i in range(n):
            chans = live[i].nonzero()[:, 0]
            for start in range(0, len(chans), ctx.batch_size):
                part = chans[start : start + ctx.batch_size]
                got = _run_ablated(ctx, i, part).float()
                if scored:
                    got = ctx.score(got, torch.full((len(part),), i, device=got.device))
                out[i, part.to(out.device)] = got
        return out

    return without_autograd(ctx.model, passes)


def _run_ablated(ctx: CamContext, i: int, chans: torch.Tensor) -> torch.Tensor:
    """Logits of image ``i`` with one channel of ``chans`` zeroed per copy.

    The hook swaps the layer's output for the ablated copies, so the layers before it run on one
    image only. Whether that is sound (no later layer reuses an earlier tensor of the batch) is
    checked once per layer by swapping in the unablated output and comparing the logits; when it
    is not, the whole model runs on repeated inputs.
    """
    raw = ctx.raw[i : i + 1]
    copies = raw.repeat(len(chans), *([1] * (raw.dim() - 1)))
    view = spatial_channel_view(copies, ctx.model, ctx.layer, ctx.x.shape[-2:])
    view[torch.arange(len(chans)), chans.to(view.device)] = 0
    if "ablation_tail" not in ctx.cache:
        ctx.cache["ablation_tail"] = _tail_only_ok(ctx, i)
    x1 = ctx.x[i : i + 1]
    x = x1 if ctx.cache["ablation_tail"] else x1.repeat(len(chans), *([1] * (x1.dim() - 1)))
    return _with_output(ctx, copies, x)


def _with_output(ctx: CamContext, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` with the layer's output (its call, as consumed) replaced by ``output``
    (R copies of one image's: R rows from one image)."""
    with hook_call(ctx.model, _layer_call(ctx), lambda o: output):
        if len(output) == len(x):
            return ctx.forward(x)
        return ctx.forward(x, rows=len(output))  # a forward without ``rows``: the full passes


def _layer_call(ctx: CamContext) -> LayerCall:
    """The layer as a call counted from the start (``act@-1`` → ``act@1``), found once."""
    found = ctx.cache.get("layer_call")
    if found is None:
        sel = LayerCall.parse(ctx.layer)
        if sel.call is not None and sel.call < 0:
            calls = sum(1 for c in trace_calls(ctx.model, ctx.x[:1]) if c.name == sel.name)
            sel = LayerCall(sel.name, calls + sel.call, consumed=sel.consumed)
        found = ctx.cache["layer_call"] = sel
    return found


def _tail_only_ok(ctx: CamContext, i: int) -> bool:
    """Does swapping in 2 copies of the layer's output give 2 copies of the image's logits?"""
    raw = ctx.raw[i : i + 1]
    try:
        got = _with_output(ctx, raw.repeat(2, *([1] * (raw.dim() - 1))), ctx.x[i : i + 1])
    except Exception:  # noqa: BLE001 - a later layer needs the whole batch
        return False
    ref = ctx.logits[i : i + 1]
    tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
    return got.shape == (2, *ref.shape[1:]) and bool((got - ref).abs().max() <= tol)


class Cam(CamMethod):
    """CAM: feature maps weighted by the classifier's weights (GAP + linear head).

    Reference implementation: torchcam's ``CAM``. Deliberate difference: the head is found by
    running the model and checked against the logits, so a layer that does not feed global
    pooling and a linear head is refused rather than explained with the wrong weights.
    """

    name = "cam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        # the target first: a dense model's 1×1-conv head is no classifier to recompute
        idx = torch.as_tensor(ctx.targets.index(len(ctx.x)))
        if bool((idx < 0).any()) or ctx.targets.kind not in ("class", "output"):
            raise AnalyzerError(
                f"CAM explains classes through the classifier's weights, not {ctx.targets.kind} "
                "targets (a segmentation's regions, a binary logit, a custom score); use "
                "--method gradcam"
            )
        if ctx.logits.dim() != 2:
            raise AnalyzerError(
                "CAM explains a classifier's N×classes scores through its weights; this output "
                f"is {'×'.join(map(str, ctx.logits.shape))}: use --method gradcam"
            )
        w, b = ctx.cache.get("cam") or _head_weights(ctx)
        ctx.cache["cam"] = (w, b)
        return w[idx.to(w.device)].to(ctx.acts.dtype)


def _head_weights(ctx: CamContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The K×C weights (and K bias) of the classifier fed by global pooling of the layer.

    The classifier is the first Linear or 1×1 Conv2d that runs after the layer (none: the layer
    itself gives the K class maps); the logits are then recomputed from the pooled activations,
    and any mismatch (something non-linear in between) is refused.
    """
    c = ctx.acts.shape[1]
    head = _first_classifier_after(ctx)
    k = ctx.logits.shape[1]
    if head is None:
        w, b = torch.eye(k, c, device=ctx.acts.device), torch.zeros(k, device=ctx.acts.device)
    elif isinstance(head, nn.Linear) or (head.kernel_size == (1, 1) and head.groups == 1):
        w = head.weight.detach().reshape(head.weight.shape[0], -1)
        b = head.bias.detach() if head.bias is not None else w.new_zeros(w.shape[0])
    else:
        w = b = None
    ok = w is not None and w.shape == (k, c)
    if ok:
        pooled = ctx.acts.float().mean(dim=(2, 3)) @ w.float().T + b.float()
        scale = ctx.logits.abs().max().clamp_min(1.0)
        tol = max(1e-3, 2 * torch.finfo(ctx.logits.dtype).eps)  # bfloat16 rounds at 4e-3
        ok = bool(((pooled - ctx.logits.float()).abs().max() / scale) < tol)
    if not ok:
        raise AnalyzerError(
            f"CAM needs layer '{ctx.layer}' to feed global average pooling and a linear (or 1×1 "
            "conv) classifier, and it does not; use --method gradcam (same map in that case, "
            "and it works on any layer)"
        )
    return w, b


def _first_classifier_after(ctx: CamContext) -> nn.Module | None:
    """The first Linear/Conv2d module called after ``ctx.layer`` finished (one dry forward)."""
    order: list[nn.Module] = []
    done = [False]
    handles = []

    def hook(m: nn.Module, i: object, o: object) -> None:
        if done[0] and isinstance(m, (nn.Linear, nn.Conv2d)):
            order.append(m)

    def passed(output: Any) -> None:
        done[0] = True

    try:
        handles = [m.register_forward_hook(hook) for m in ctx.model.modules()]
        with torch.no_grad(), hook_call(ctx.model, _layer_call(ctx), passed):
            ctx.forward(ctx.x[:1])
    finally:
        for h in handles:
            h.remove()
    return order[0] if order else None


METHODS: dict[str, type[CamMethod]] = {
    m.name: m
    for m in (
        Cam,
        GradCam,
        GradCamPP,
        XGradCam,
        LayerCam,
        HiResCam,
        ScoreCam,
        EigenCam,
        AblationCam,
    )
}
