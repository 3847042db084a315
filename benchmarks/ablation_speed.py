"""Cached-prefix vs naive ablation on timm resnet18 (CPU): speed ratios and a bit-identity check.

Blocks: identity-ablate each of the 8 residual blocks (one baseline run + the suffix after each
block, vs one full model run per block plus the baseline). Channels: zero each of the 512 channels
of ``layer4`` (one prefix run + stacked pool/fc passes, vs one full model run per channel). The
naive channel sweep takes ~512 full runs, so by default it is timed on ``--naive-channels``
channels spread over the 512 and scaled to 512 (``--naive-channels 512`` runs them all); the
logits are compared bit for bit on every channel the naive path ran.

    python benchmarks/ablation_speed.py [--images 64] [--size 112] [--naive-channels 32]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn

from netlens.analyzers.ablation import channels as ch
from netlens.analyzers.ablation.engine import Engine
from netlens.analyzers.ablation.modes import channel_replacement, unit_replacement
from netlens.analyzers.ablation.units import find_units


def make_model(seed: int = 0) -> nn.Module:
    """resnet18 with random weights; BN scales randomised so no block is a no-op at init."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
    return model.eval()


def bench_blocks(model: nn.Module, x: torch.Tensor) -> tuple[float, float, bool]:
    units, _ = find_units(model, x)
    names = [u.name for u in units]
    engine = Engine(model, names)
    reps = {u.name: unit_replacement(u, "identity") for u in units}
    t0 = time.perf_counter()
    cache = engine.prefix(x)
    fast = {n: engine.ablated(cache, n, reps[n], 0) for n in names}
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = model(x)
    slow = {n: engine.naive(x, n, reps[n], 0) for n in names}
    t_naive = time.perf_counter() - t0
    same = torch.equal(base, cache.logits) and all(torch.equal(fast[n], slow[n]) for n in names)
    return t_cached, t_naive, same


def bench_channels(
    model: nn.Module, x: torch.Tensor, naive_channels: int
) -> tuple[float, float, bool, int]:
    engine = Engine(model, ["layer4"])
    n_ch = 512
    t0 = time.perf_counter()
    cache = engine.prefix(x)
    per = cache.outputs["layer4"][0].numel()
    group = ch.group_size(per, x.shape[0])
    logits = {}
    for abl in ch.channel_ablations("layer4", n_ch, "zero", None, group=group):
        out = engine.ablated(cache, "layer4", abl.replace, 0, len(abl.keys))
        for g, key in enumerate(abl.keys):
            logits[key] = out[g * x.shape[0] : (g + 1) * x.shape[0]]
    t_cached = time.perf_counter() - t0
    picked = torch.linspace(0, n_ch - 1, min(naive_channels, n_ch)).round().long().unique()
    eye = torch.eye(n_ch, dtype=torch.bool)
    same = True
    t0 = time.perf_counter()
    for c in picked.tolist():
        ref = engine.naive(x, "layer4", channel_replacement("zero", None, eye[c]), 0)
        same &= torch.equal(ref, logits[ch.channel_key("layer4", c)])
    t_naive = (time.perf_counter() - t0) * n_ch / len(picked)
    return t_cached, t_naive, same, len(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--naive-channels", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model()
    x = torch.randn(
        args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)
    )
    print(
        f"timm resnet18, {args.images} images at {args.size}², CPU, "
        f"{torch.get_num_threads()} threads"
    )
    with torch.no_grad():
        model(x[:2])  # warm-up
        tc, tn, same = bench_blocks(model, x)
        print(
            f"blocks   (8, identity):  cached {tc:7.2f} s  naive {tn:7.2f} s  "
            f"ratio {tn / tc:6.1f}×  identical logits: {same}"
        )
        tc, tn, same, k = bench_channels(model, x, args.naive_channels)
        note = "" if k == 512 else f" (naive timed on {k} channels, scaled to 512)"
        print(
            f"channels (512 of layer4): cached {tc:7.2f} s  naive {tn:7.2f} s  "
            f"ratio {tn / tc:6.1f}×  identical logits: {same}{note}"
        )


if __name__ == "__main__":
    main()
