"""Training throughput of the reference architectures: images/s per batch step, on this machine.

Measures forward+backward+AdamW steps on random data at each zoo model's input size, with and
without channels-last memory (the trainer uses channels-last for conv nets)::

    python benchmarks/train_throughput.py --threads 1 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch

from netlens.models.factory import create_arch
from netlens.plugins.manager import PluginHost
from netlens.train.recipes import RECIPES

INPUT = {"shapes": (3, 64, 64), "fashion-mnist": (1, 28, 28), "mnist5k": (1, 28, 28)}


def images_per_s(
    model: torch.nn.Module, shape: tuple[int, ...], batch: int, steps: int, channels_last: bool
) -> float:
    """Images per second over ``steps`` timed training steps (after one warm-up step)."""
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 5, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    host = PluginHost()
    print(f"{'recipe':<18}{'arch':<9}{'input':<10}{'img/s':>9}{'img/s CL':>10}{'ratio':>7}")
    for r in RECIPES.values():
        shape = INPUT[r.config["data"]]
        kwargs = dict(r.config.get("arch_kwargs", {}), in_chans=shape[0], img_size=shape[1])
        rates = []
        for cl in (False, True):
            torch.manual_seed(0)
            model = create_arch(r.config["arch"], 10, host, **kwargs)
            rates.append(images_per_s(model, shape, args.batch, args.steps, cl))
        print(
            f"{r.name:<18}{r.config['arch']:<9}{'x'.join(map(str, shape)):<10}"
            f"{rates[0]:>9.0f}{rates[1]:>10.0f}{rates[1] / rates[0]:>7.2f}"
        )


if __name__ == "__main__":
    main()
