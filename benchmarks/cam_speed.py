"""CAM speed: netlens against torchcam, pytorch-grad-cam and a minimal Grad-CAM, in one run.

Gradient methods: a batch of 16 × 224² images through timm resnet18 (random weights, randomised
BatchNorm), layer4, the predicted class as target; Grad-CAM is also timed as a minimal
hand-written implementation in plain torch (forward, ``autograd.grad`` to the layer, weights,
upsample, normalise): the limit any library can reach. Score-CAM and Ablation-CAM (one
image, batches of 32; torchcam has no Ablation-CAM) on three models: the random resnet18; a
resnet18 trained here for a few epochs on generated shapes (trained weights have dead and
repeated channels, which netlens runs once; each case prints how many masks are distinct);
and the zoo's default model on 8 generated images (its last 48-channel block). Each
library's time includes its upsampling to the input size; the best of ``--repeat`` interleaved
runs is kept. Wall-clock and CPU time (``time.process_time``, all threads) are both reported;
the last line sums the ratios up.

    python benchmarks/cam_speed.py [--repeat 3] [--methods gradcam,scorecam,ablationcam]
        [--epochs 2]

Needs the ``bench`` extras: ``pip install netlens[bench]`` (grad-cam, torchcam).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

import netlens

PEER_NAMES = {
    "gradcam": ("GradCAM", "GradCAM"),
    "gradcam++": ("GradCAMpp", "GradCAMPlusPlus"),
    "layercam": ("LayerCAM", "LayerCAM"),
    "xgradcam": ("XGradCAM", "XGradCAM"),
    "scorecam": ("ScoreCAM", "ScoreCAM"),
    "ablationcam": (None, "AblationCAM"),  # torchcam has none
}
ONE_IMAGE = {"scorecam", "ablationcam"}  # the methods that run a pass per channel
BATCH_SIZE = 32  # masked passes at once, the same for every library
Case = tuple[str, nn.Module, torch.Tensor, str]  # name, model, input, layer


def random_resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # timm zero-inits some; make maps non-trivial
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def trained_resnet18(epochs: int, size: int = 96, n: int = 640) -> tuple[nn.Module, torch.Tensor]:
    """timm resnet18 trained on generated shapes for ``epochs`` epochs; and a held-out image."""
    from netlens.data.shapes import generate

    images, labels, _, classes = generate(n + 1, size, seed=11)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[:n]).argmax(1) == y[:n]).float().mean().item()
    print(f"trained resnet18: {epochs} epochs on {n} shapes at {size}², train accuracy {acc:.2f}")
    return model, x[n:]


def run_netlens(method: str, case: Case) -> torch.Tensor:
    _, model, x, layer = case
    r = netlens.cam(model, x, method=method, layer=layer, batch_size=BATCH_SIZE)
    return torch.from_numpy(r.heatmaps)


def run_torchcam(method: str, case: Case) -> torch.Tensor:
    from torchcam import methods

    _, model, x, layer = case
    cls = getattr(methods, PEER_NAMES[method][0])
    kwargs = {"batch_size": BATCH_SIZE} if method == "scorecam" else {}
    with cls(model, target_layer=layer, input_shape=tuple(x.shape[1:]), **kwargs) as ex:
        with torch.set_grad_enabled(method != "scorecam"):
            out = model(x)
        low = ex(out.argmax(1).tolist(), out)[0]
    maps = F.interpolate(low[:, None], size=x.shape[-2:], mode="bilinear")[:, 0]
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return (maps - lo) / (hi - lo + 1e-7)


def run_pytorch_grad_cam(method: str, case: Case) -> torch.Tensor:
    import pytorch_grad_cam as pgc

    _, model, x, layer = case
    cls = getattr(pgc, PEER_NAMES[method][1])
    with cls(model=model, target_layers=[model.get_submodule(layer)]) as explainer:
        explainer.batch_size = BATCH_SIZE
        return torch.from_numpy(explainer(input_tensor=x, targets=None))


def run_minimal(method: str, case: Case) -> torch.Tensor:
    """Grad-CAM in a dozen lines of plain torch: the lower bound for a library."""
    _, model, x, layer = case
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(score, store[0])
    with torch.no_grad():
        cam = torch.relu((grad.mean((2, 3), keepdim=True) * store[0]).sum(1, keepdim=True))
        maps = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
        return (maps - lo) / (hi - lo + 1e-7)


RUNNERS: dict[str, Callable[[str, Case], torch.Tensor]] = {
    "netlens": run_netlens,
    "torchcam": run_torchcam,
    "pytorch-grad-cam": run_pytorch_grad_cam,
    "minimal": run_minimal,
}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(method: str, case: Case, repeat: int) -> dict[str, tuple[float, float]]:
    names = [
        n
        for n in RUNNERS
        if (n != "minimal" or method == "gradcam")
        and (n != "torchcam" or PEER_NAMES[method][0] is not None)
    ]
    best = {name: (float("inf"), float("inf")) for name in names}
    for _ in range(repeat):
        for name in names:
            wall, cpu = timed(lambda r=RUNNERS[name]: r(method, case))
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default=",".join(PEER_NAMES))
    parser.add_argument("--epochs", type=int, default=4, help="training of the trained case")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rand = random_resnet18()
    x = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    base: Case = ("random resnet18", rand, x, "layer4")
    for runner in RUNNERS.values():  # warm-up (imports, allocator, oneDNN kernels)
        runner("gradcam", ("warm-up", rand, x[:2], "layer4"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; gradient methods: "
        f"batch 16×224², random resnet18, layer4; Score-/Ablation-CAM: 1 image; "
        f"best of {args.repeat}"
    )
    header = f"{'method':<11} {'model':<20} {'time':<5}" + "".join(
        f"{n + ' s':>18}" for n in RUNNERS
    )
    print(header + f"{'/torchcam':>11}{'/grad-cam':>11}{'/minimal':>10}")
    summary = []
    methods = args.methods.split(",")
    cases = [base]
    if ONE_IMAGE & set(methods):
        trained, xt = trained_resnet18(args.epochs)
        cases.append(("trained resnet18", trained, xt, "layer4"))
        cases.append(_zoo_case())
    for method in methods:
        for name, model, xs, layer in cases if method in ONE_IMAGE else [base]:
            xs = xs[:1] if method in ONE_IMAGE and not name.startswith("zoo") else xs
            case: Case = (name, model, xs, layer)
            for runner in RUNNERS.values():  # first calls on a new model/shape cost extra
                runner("gradcam", case)
            if method == "scorecam":
                print(f"{'':<11} {name:<20} {distinct_masks(case)}", flush=True)
            t = bench(method, case, args.repeat)
            for k, kind in enumerate(("wall", "cpu")):
                ours = t["netlens"][k]
                cells = "".join(f"{t[n][k]:>18.2f}" if n in t else f"{'':>18}" for n in RUNNERS)
                ratios = [ours / t[n][k] if n in t else None for n in RUNNERS if n != "netlens"]
                shown = "".join(
                    f"{r:>{w}.2f}" if r is not None else f"{'—':>{w}}"
                    for r, w in zip(ratios, (11, 11, 10), strict=True)
                )
                print(f"{method:<11} {name:<20} {kind:<5}{cells}{shown}", flush=True)
                if kind == "cpu":
                    label = f"{method}[{name}]"
                    tc = f"{ratios[0]:.2f}×tc " if ratios[0] is not None else ""
                    summary.append(f"{label} {tc}{ratios[1]:.2f}×pgc")
                    if ratios[2] is not None:
                        summary.append(f"{label} {ratios[2]:.2f}×minimal")
    print("summary (netlens CPU time / peer's): " + "; ".join(summary))


def distinct_masks(case: Case) -> str:
    """How many masked passes Score-CAM needs: netlens' own count of distinct non-empty masks."""
    from netlens.analyzers.cam_base import CamContext
    from netlens.analyzers.cam_methods import _distinct_masks

    _, model, x, layer = case
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    acts = store[0].detach()
    ctx = CamContext(model, x, layer, acts, None, None, logits, model, BATCH_SIZE)  # type: ignore[arg-type]
    pairs, _ = _distinct_masks(ctx)
    dead = int(acts.flatten(2).eq(0).all(2).sum())
    total = acts.shape[0] * acts.shape[1]
    return f"distinct non-empty masks: {len(pairs)} of {total} channels ({dead} all zero)"


def _zoo_case() -> Case:
    """The zoo's default model on 8 generated shapes, at its last 48-channel block."""
    from netlens.data.shapes import generate

    lens = netlens.load()
    images, _, _, _ = generate(8, 64, seed=5)
    return f"zoo {lens.name}", lens.model, lens.preprocess(list(images)), "features.5"


if __name__ == "__main__":
    main()
