"""The built-in CAM methods; each supplies its channel weights to :class:`CamMethod`.

References: CAM (Zhou et al. 2016), Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay
et al. 2018), XGrad-CAM (Fu et al. 2020), Layer-CAM (Jiang et al. 2021), HiResCAM (Draelos &
Carin 2020), Score-CAM (Wang et al. 2020), Eigen-CAM (Muhammad & Yeasin 2020), Ablation-CAM
(Desai & Ramaswamy 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import AnalyzerError
from .cam_base import CamContext, CamMethod, normalize_maps, spatial_channel_view, upsample

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
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    name = "gradcam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return ctx.grads.mean(dim=(2, 3))


class GradCamPP(CamMethod):
    """Grad-CAM++: positive gradients weighted by second/third-order terms (paper, eq. 19)."""

    name = "gradcam++"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        # alpha = g² / (2g² + ΣA·g³) = 1 / (2 + ΣA·g) where g ≠ 0: exact, no eps to tune.
        g = ctx.grads
        denom = 2 + ctx.acts.sum(dim=(2, 3), keepdim=True) * g
        ok = (g != 0) & (denom != 0)
        alpha = torch.where(ok, 1 / torch.where(ok, denom, 1), 0)
        return (alpha * torch.relu(g)).sum(dim=(2, 3))


class XGradCam(CamMethod):
    """XGrad-CAM: gradients averaged with the activations as weights."""

    name = "xgradcam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        a = ctx.acts
        return (ctx.grads * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + _EPS)


class LayerCam(CamMethod):
    """Layer-CAM: every activation weighted by its own positive gradient."""

    name = "layercam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return torch.relu(ctx.grads)


class HiResCam(CamMethod):
    """HiResCAM: element-wise gradient × activation, summed over channels."""

    name = "hirescam"

    def weights(self, ctx: CamContext) -> torch.Tensor:
        return ctx.grads


class EigenCam(CamMethod):
    """Eigen-CAM: the activations projected on their first principal direction (no gradients)."""

    name = "eigencam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        a = ctx.acts.float().flatten(2).transpose(1, 2)  # N × hw × C
        v = torch.linalg.svd(a, full_matrices=False).Vh[:, 0, :]  # N × C
        proj = (a @ v[:, :, None]).sum(dim=(1, 2))
        return v * torch.where(proj < 0, -1.0, 1.0)[:, None]  # SVD's sign is arbitrary


class ScoreCam(CamMethod):
    """Score-CAM: channels weighted by the class score of the input masked by each channel.

    As in the paper (Algorithm 1) and its reference implementations, the weights are the softmax
    over channels of the target logit of each masked input.
    """

    name = "scorecam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        logits = ctx.cache.get("scorecam")
        if logits is None:
            logits = ctx.cache["scorecam"] = _masked_logits(ctx)
        n, c = logits.shape[:2]
        rows = torch.arange(n, device=logits.device).repeat_interleave(c)
        scores = ctx.score(logits.flatten(0, 1), rows).reshape(n, c)
        return torch.softmax(scores.float(), dim=1).to(ctx.acts.dtype)


def _masked_logits(ctx: CamContext) -> torch.Tensor:
    """N×C×K logits of the input masked by each channel, upsampled and min-max normalised.

    Masks are made per batch of ``batch_size`` passes, so memory stays bounded; the logits of
    all classes are kept, so other targets (``top=K``) need no further passes. Channels with a
    constant map all give the same (empty) mask, which is run once.
    """
    n, c = ctx.acts.shape[:2]
    size = tuple(ctx.x.shape[-2:])
    flat = ctx.acts.float().flatten(2)
    live = (flat.amax(dim=2) - flat.amin(dim=2)) > _EPS  # N × C
    out = torch.empty(n, c, ctx.logits.shape[1], device=ctx.x.device)
    todo = live.nonzero()
    forward = ctx.many(len(todo))
    if not bool(live.all()):
        out[~live] = forward(torch.zeros_like(ctx.x[:1]))[0].float()
    for start in range(0, len(todo), ctx.batch_size):
        idx = todo[start : start + ctx.batch_size]
        masks = normalize_maps(upsample(ctx.acts[idx[:, 0], idx[:, 1]].float(), size))
        batch = ctx.x[idx[:, 0]] * masks[:, None].to(ctx.x.dtype)
        out[idx[:, 0], idx[:, 1]] = forward(batch).float()
    return out


class AblationCam(CamMethod):
    """Ablation-CAM: channels weighted by the relative drop of the class score when zeroed."""

    name = "ablationcam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        drops = ctx.cache.get("ablation")
        if drops is None:
            drops = ctx.cache["ablation"] = _ablated_logits(ctx)  # N × C × K
        n, c = drops.shape[:2]
        rows = torch.arange(n, device=drops.device)
        base = ctx.score(ctx.logits, rows)[:, None]
        ablated = ctx.score(drops.flatten(0, 1), rows.repeat_interleave(c)).reshape(n, c)
        # |y_c| rather than y_c: a negative logit would otherwise flip the whole map.
        return ((base - ablated) / (base.abs() + _EPS)).to(ctx.acts.dtype)


def _ablated_logits(ctx: CamContext) -> torch.Tensor:
    """N×C×K logits with each channel of the layer zeroed in turn."""
    model, layer = ctx.model, ctx.layer
    module = dict(model.named_modules())[layer]
    if ctx.raw is None:
        raise AnalyzerError("Ablation-CAM needs the layer's raw output")
    n, c = ctx.acts.shape[:2]
    out = torch.empty(n, c, ctx.logits.shape[1], device=ctx.x.device)
    for i in range(n):
        for start in range(0, c, ctx.batch_size):
            chans = torch.arange(start, min(start + ctx.batch_size, c))
            out[i, chans] = _run_ablated(ctx, module, i, chans)
    return out


def _run_ablated(ctx: CamContext, module: nn.Module, i: int, chans: torch.Tensor) -> torch.Tensor:
    """Logits of image ``i`` with one channel of ``chans`` zeroed per copy.

    The hook swaps the layer's output for the ablated copies, so the layers before it run on one
    image only. Whether that is sound (no later layer reuses an earlier tensor of the batch) is
    checked once per layer by swapping in the unablated output and comparing the logits; when it
    is not, the whole model runs on repeated inputs.
    """
    raw = ctx.raw[i : i + 1]
    copies = raw.repeat(len(chans), *([1] * (raw.dim() - 1)))
    view = spatial_channel_view(copies, ctx.model, ctx.layer)
    view[torch.arange(len(chans)), chans.to(view.device)] = 0
    if "ablation_tail" not in ctx.cache:
        ctx.cache["ablation_tail"] = _tail_only_ok(ctx, module, i)
    x1 = ctx.x[i : i + 1]
    x = x1 if ctx.cache["ablation_tail"] else x1.repeat(len(chans), *([1] * (x1.dim() - 1)))
    return _with_output(ctx, module, copies, x)


def _with_output(
    ctx: CamContext, module: nn.Module, output: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Logits of ``x`` with ``module``'s output replaced by ``output``."""
    handle = module.register_forward_hook(lambda m, i, o: output)
    try:
        return ctx.forward(x)
    finally:
        handle.remove()


def _tail_only_ok(ctx: CamContext, module: nn.Module, i: int) -> bool:
    """Does swapping in 2 copies of the layer's output give 2 copies of the image's logits?"""
    raw = ctx.raw[i : i + 1]
    try:
        got = _with_output(ctx, module, raw.repeat(2, *([1] * (raw.dim() - 1))), ctx.x[i : i + 1])
    except Exception:  # noqa: BLE001 - a later layer needs the whole batch
        return False
    ref = ctx.logits[i : i + 1]
    tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
    return got.shape == (2, ref.shape[1]) and bool((got - ref).abs().max() <= tol)


class Cam(CamMethod):
    """CAM: feature maps weighted by the classifier's weights (GAP + linear head)."""

    name = "cam"
    needs_grads = False

    def weights(self, ctx: CamContext) -> torch.Tensor:
        w, b = ctx.cache.get("cam") or _head_weights(ctx)
        ctx.cache["cam"] = (w, b)
        idx = torch.as_tensor(ctx.targets.index(len(ctx.x)), device=w.device)
        if bool((idx < 0).any()) or ctx.targets.kind not in ("class", "output"):
            raise AnalyzerError(
                "CAM explains classes through the classifier's weights; for other targets "
                "use --method gradcam"
            )
        return w[idx].to(ctx.acts.dtype)


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
        ok = bool(((pooled - ctx.logits.float()).abs().max() / scale) < 1e-3)
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
    target = dict(ctx.model.named_modules())[ctx.layer]
    handles = []

    def hook(m: nn.Module, i: object, o: object) -> None:
        if m is target:
            done[0] = True
        elif done[0] and isinstance(m, (nn.Linear, nn.Conv2d)):
            order.append(m)

    try:
        handles = [m.register_forward_hook(hook) for m in ctx.model.modules()]
        with torch.no_grad():
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
