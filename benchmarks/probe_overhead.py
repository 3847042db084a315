"""Probe overhead: forward with a probe on every module / plain forward (timm resnet18, CPU).

Prints the ratio measured in this run (target ≤ 1.05). Alternates the two so machine noise hits
both alike, and reports the median of several rounds.

    python benchmarks/probe_overhead.py [--batch 8] [--size 224] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import netlens


def timed(fn, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    n_modules = len(dict(model.named_modules())) - 1

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def probed() -> None:
        with torch.no_grad(), netlens.probe(model, "*"):
            model(x)

    plain(), probed()  # warm up
    ratios, base, prob = [], [], []
    for _ in range(args.rounds):
        b = timed(plain, args.repeat)
        p = timed(probed, args.repeat)
        base.append(b)
        prob.append(p)
        ratios.append(p / b)
    print(f"timm resnet18, batch {args.batch}×3×{args.size}², {n_modules} modules probed, "
          f"{torch.get_num_threads()} threads")
    print(f"plain forward   {statistics.median(base) * 1e3:8.1f} ms")
    print(f"probe all       {statistics.median(prob) * 1e3:8.1f} ms")
    print(f"ratio probe/plain (median of {args.rounds}): {statistics.median(ratios):.3f}  "
          "(target <= 1.05)")


if __name__ == "__main__":
    main()
