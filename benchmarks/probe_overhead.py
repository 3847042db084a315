"""Probe overhead: forward with a probe on every module / plain forward (timm resnet18, CPU).

Prints ratios measured in this run against a plain forward (target ≤ 1.05) and against two
hand-written SaveFeatures baselines that probe the same 93 modules: ``detach`` (fastai-style,
cheap but wrong under in-place ops) and ``clone`` (correct, copies every output). Alternates the
variants so machine noise hits all alike, and reports the median of several rounds.

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

    modules = [m for name, m in model.named_modules() if name]

    def save_features(copy: bool):  # noqa: ANN202
        def run() -> None:
            store: list[torch.Tensor] = []
            hook = (
                (lambda m, i, o: store.append(o.detach().clone()))
                if copy
                else (lambda m, i, o: store.append(o.detach()))
            )
            handles = [m.register_forward_hook(hook) for m in modules]
            try:
                with torch.no_grad():
                    model(x)
            finally:
                for h in handles:
                    h.remove()

        return run

    variants = {
        "plain forward": plain,
        "SaveFeatures detach (wrong in-place)": save_features(False),
        "SaveFeatures clone (correct)": save_features(True),
        "netlens.probe('*')": probed,
    }
    for fn in variants.values():
        fn()  # warm up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, args.repeat))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"timm resnet18, batch {args.batch}×3×{args.size}², {n_modules} modules probed, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    for name, t in med.items():
        print(f"{name:40s} {t * 1e3:8.1f} ms")
    probe_t = med["netlens.probe('*')"]
    print(
        f"ratio probe / plain forward:            {probe_t / med['plain forward']:.3f}"
        "  (target <= 1.05)"
    )
    print(
        f"ratio probe / SaveFeatures detach:      "
        f"{probe_t / med['SaveFeatures detach (wrong in-place)']:.3f}"
    )
    print(
        f"ratio probe / SaveFeatures clone:       "
        f"{probe_t / med['SaveFeatures clone (correct)']:.3f}"
    )


if __name__ == "__main__":
    main()
