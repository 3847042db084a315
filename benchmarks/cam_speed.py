"""CAM speed: netlens against torchcam and pytorch-grad-cam, measured in the same run.

Batch of 16 × 224² images, timm resnet18 (random weights, randomised BatchNorm), CPU, layer4,
the predicted class as target; Score-CAM on one image (512 masked passes, batches of 32).
Each library's time includes its upsampling to the input size; the best of ``--repeat`` runs is
kept (the runs are interleaved, so load changes hit every library alike). Wall-clock and CPU
time (``time.process_time``, all threads) are both reported: on a shared machine the CPU time is
the steadier measure of the work each library does.

    python benchmarks/cam_speed.py [--repeat 3] [--methods gradcam,scorecam]

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
}
BATCH_SIZE = 32  # masked passes at once, the same for every library


def model_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # timm zero-inits some; make maps non-trivial
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(16, 3, 224, 224)


def run_netlens(method: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r = netlens.cam(model, x, method=method, layer="layer4", batch_size=BATCH_SIZE)
    return torch.from_numpy(r.heatmaps)


def run_torchcam(method: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from torchcam import methods

    cls = getattr(methods, PEER_NAMES[method][0])
    kwargs = {"batch_size": BATCH_SIZE} if method == "scorecam" else {}
    with cls(model, target_layer="layer4", input_shape=tuple(x.shape[1:]), **kwargs) as ex:
        with torch.set_grad_enabled(method != "scorecam"):
            out = model(x)
        low = ex(out.argmax(1).tolist(), out)[0]
    maps = F.interpolate(low[:, None], size=x.shape[-2:], mode="bilinear")[:, 0]
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return (maps - lo) / (hi - lo + 1e-7)


def run_pytorch_grad_cam(method: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import pytorch_grad_cam as pgc

    cls = getattr(pgc, PEER_NAMES[method][1])
    with cls(model=model, target_layers=[model.layer4]) as explainer:
        explainer.batch_size = BATCH_SIZE
        return torch.from_numpy(explainer(input_tensor=x, targets=None))


RUNNERS: dict[str, Callable[[str, nn.Module, torch.Tensor], torch.Tensor]] = {
    "netlens": run_netlens,
    "torchcam": run_torchcam,
    "pytorch-grad-cam": run_pytorch_grad_cam,
}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(
    method: str, model: nn.Module, x: torch.Tensor, repeat: int
) -> dict[str, tuple[float, float]]:
    best = {name: (float("inf"), float("inf")) for name in RUNNERS}
    for _ in range(repeat):
        for name, runner in RUNNERS.items():
            wall, cpu = timed(lambda r=runner: r(method, model, x))
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default=",".join(PEER_NAMES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model, x = model_and_input()
    for runner in RUNNERS.values():  # warm-up (imports, allocator, oneDNN kernels)
        runner("gradcam", model, x[:2])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; batch 16×224², "
        f"timm resnet18, layer4; Score-CAM on 1 image; best of {args.repeat}"
    )
    print(
        f"{'method':<10} {'time':<5} {'netlens s':>10} {'torchcam s':>11} {'grad-cam s':>11} "
        f"{'netlens/torchcam':>17} {'netlens/grad-cam':>17}"
    )
    for method in args.methods.split(","):
        xs = x[:1] if method == "scorecam" else x
        t = bench(method, model, xs, args.repeat if method != "scorecam" else 1)
        for k, kind in enumerate(("wall", "cpu")):
            ours, tc, pgc = t["netlens"][k], t["torchcam"][k], t["pytorch-grad-cam"][k]
            print(
                f"{method:<10} {kind:<5} {ours:>10.2f} {tc:>11.2f} {pgc:>11.2f} "
                f"{ours / tc:>17.2f} {ours / pgc:>17.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
