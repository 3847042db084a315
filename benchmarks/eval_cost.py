"""What explanation metrics cost: forward passes and seconds per image, for each metric.

Runs ``lens.evaluate`` one metric at a time on generated shapes (64², with masks) with Grad-CAM
heatmaps, on the zoo's ``shapes-allconv`` when it is installed (else the same architecture with
random weights: costs do not depend on training), and reports the forward-passed images per
image (counted, and checked against the plan printed before a run) and the seconds per image
(metric only; the CAM itself is listed on its own line). ROAD is also timed against
pytorch-grad-cam's implementation (scipy sparse solve per image and percentile) on the same
images and heatmaps, when grad-cam is installed.

    python benchmarks/eval_cost.py [--images 16] [--steps 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import netlens
from netlens.data import ArrayDataset
from netlens.data.shapes import generate

METRICS = ("pointing", "energy", "deletion", "insertion", "road-morf", "road-lerf")
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def open_lens() -> netlens.Lens:
    try:
        return netlens.load("zoo:shapes-allconv")
    except netlens.NetlensError:
        from netlens.models.archs import allconv

        torch.manual_seed(0)
        return netlens.load(allconv(num_classes=5, in_chans=3, img_size=64).eval())


def peer_road_seconds(
    lens: netlens.Lens, x: torch.Tensor, heat: np.ndarray, targets: np.ndarray
) -> float | None:
    """Seconds per image of pytorch-grad-cam's ROAD MoRF average (None if not installed)."""
    try:
        from pytorch_grad_cam.metrics.road import ROADMostRelevantFirstAverage
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    except ImportError:
        return None
    metric = ROADMostRelevantFirstAverage(percentiles=list(PERCENTILES))
    tg = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    t0 = time.perf_counter()
    with torch.no_grad():
        metric(x, heat, tg, lens.model)
    return (time.perf_counter() - t0) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lens = open_lens()
    images, labels, masks, classes = generate(args.images, 64, seed=3)
    data = ArrayDataset(images, labels, classes, masks=masks).with_preprocess(lens.transform)
    x = torch.stack([data[i][0] for i in range(len(data))])

    t0 = time.perf_counter()
    cam = lens.cam(x, method="gradcam", target=labels.tolist())
    cam_s = (time.perf_counter() - t0) / len(x)
    print(
        f"{lens.name}, {args.images} images 64², {torch.get_num_threads()} torch threads, "
        f"{args.steps} deletion/insertion steps, 9 ROAD fractions, random baselines on"
    )
    print(f"{'metric':<12}{'planned/img':>12}{'forwarded/img':>15}{'s/img':>9}")
    print(f"{'(gradcam)':<12}{'':>12}{'1 + backward':>15}{cam_s:>9.4f}")
    seconds = {}
    for m in METRICS:
        r = lens.evaluate(data, methods="gradcam", metrics=m, limit=args.images, steps=args.steps)
        cost = r.meta["cost_per_image"][m]
        seconds[m] = cost["seconds"]
        planned = r.meta["planned_forward_passes"] / args.images
        print(f"{m:<12}{planned:>12.0f}{cost['forward_passes']:>15.0f}{cost['seconds']:>9.4f}")
    peer = peer_road_seconds(lens, x, cam.heatmaps, labels)
    if peer is not None:
        # netlens' road-morf time includes its random-order baseline: halve it to compare
        ours = seconds["road-morf"] / 2
        print(
            f"ROAD MoRF, 9 fractions: netlens {ours:.4f} s/img, pytorch-grad-cam "
            f"{peer:.4f} s/img ({peer / ours:.1f}× netlens' time)"
        )


if __name__ == "__main__":
    main()
