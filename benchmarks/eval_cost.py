"""What explanation metrics cost: forward passes and seconds per image, for each metric.

Runs ``lens.evaluate`` one metric at a time on generated shapes (64², with masks) with Grad-CAM
heatmaps, on the zoo's ``shapes-allconv`` when it is installed (else the same architecture with
random weights: costs do not depend on training), and reports the forward-passed images per
image (counted, and checked against the plan printed before a run) and the seconds per image
(metric only; the CAM itself is listed on its own line). ROAD is also timed against
pytorch-grad-cam's implementation (scipy sparse solve per image and percentile) on the same
images and heatmaps, when grad-cam is installed, and netlens' batched multigrid imputation is
timed against a sparse direct solve per system (``scipy.sparse.linalg.splu``, the ROAD
reference code's method) on the same masks, with the largest difference between the two. The
last line sums the ratios up.

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


def splu_imputation(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The ROAD system of every image solved directly, one sparse LU per mask (reference)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    out = x.astype(np.float64)
    h, w = removed.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for img, miss in zip(out, removed, strict=True):
        ys, xs = np.nonzero(miss)
        index = -np.ones((h + 2, w + 2), np.int64)
        index[ys + 1, xs + 1] = np.arange(len(ys))
        padded = np.pad(img, ((0, 0), (1, 1), (1, 1)))
        rows, cols, vals = [], [], []
        deg, rhs = np.zeros(len(ys)), np.zeros((len(ys), len(img)))
        for dy, dx in offsets:
            wt = 1 / 12 if dy and dx else 1 / 6
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            deg += wt * inside
            j = index[yy + 1, xx + 1]
            rows.append(np.nonzero(j >= 0)[0])
            cols.append(j[j >= 0])
            vals.append(np.full((j >= 0).sum(), -wt))
            kept = inside & (j < 0)
            rhs[kept] += wt * padded[:, yy[kept] + 1, xx[kept] + 1].T
        a = sp.csc_matrix(
            (
                np.concatenate([*vals, deg]),
                (
                    np.concatenate([*rows, np.arange(len(ys))]),
                    np.concatenate([*cols, np.arange(len(ys))]),
                ),
            ),
            shape=(len(ys), len(ys)),
        )
        img[:, ys, xs] = splu(a, permc_spec="MMD_AT_PLUS_A").solve(rhs).T
    return out


def solver_seconds(x: torch.Tensor, heat: np.ndarray) -> tuple[float, float, float]:
    """CPU seconds per system of netlens' solve and of ``splu``, and their largest difference."""
    from netlens.metrics.imputation import solve_imputation
    from netlens.metrics.perturb import image_ranks

    ranks = image_ranks(heat, "heatmap", 0)
    hw = ranks[0].size
    masks = np.concatenate([ranks < round(f / 10 * hw) for f in range(1, 10)])
    copies = np.concatenate([x.numpy()] * 9)
    t0 = time.process_time()
    ours = solve_imputation(copies, masks, workers=1)
    t1 = time.process_time()
    ref = splu_imputation(copies, masks)
    t2 = time.process_time()
    return (t1 - t0) / len(masks), (t2 - t1) / len(masks), float(np.abs(ours - ref).max())


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
    summary = [
        f"ROAD (MoRF + LeRF + baseline) {seconds['road-morf'] + seconds['road-lerf']:.3f} s/img"
    ]
    peer = peer_road_seconds(lens, x, cam.heatmaps, labels)
    if peer is not None:
        # netlens' road-morf time includes its random-order baseline: halve it to compare
        ours = seconds["road-morf"] / 2
        print(
            f"ROAD MoRF, 9 fractions: netlens {ours:.4f} s/img, pytorch-grad-cam "
            f"{peer:.4f} s/img ({peer / ours:.1f}× netlens' time)"
        )
        summary.append(f"ROAD MoRF netlens/pytorch-grad-cam {ours / peer:.3f}")
    mg, lu, diff = solver_seconds(x, cam.heatmaps)
    print(
        f"imputation, CPU per system (3 channels, 9 fractions of each heatmap): multigrid CG "
        f"{mg * 1e3:.2f} ms, scipy splu {lu * 1e3:.2f} ms; largest difference {diff:.1e}"
    )
    summary.append(f"imputation multigrid/splu CPU {mg / lu:.2f} (max diff {diff:.0e})")
    print("summary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
