"""Residual blocks versus plain layers (Veit et al., 2016) on the bundled Fashion-MNIST models.

    python examples/ablation_study.py [--limit 1000] [--out netlens-out/ablation]

Removes each block of ``zoo:fmnist-resnet`` and each layer of ``zoo:fmnist-vgg`` in turn and
prints the test accuracy left, with bootstrap 95 % CIs; saves both studies (PNG, CSV, JSON).
Needs the Fashion-MNIST test set (Debian: ``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse

import netlens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images to use")
    parser.add_argument("--out", default="netlens-out/ablation", help="output folder")
    args = parser.parse_args()

    results = {}
    for name in ("fmnist-resnet", "fmnist-vgg"):
        res = netlens.load(f"zoo:{name}").ablate("fashion-mnist", limit=args.limit)
        res.save(f"{args.out}/{name}")
        results[name] = res
        base = res.baseline
        print(f"{name}: intact accuracy {base['value']:.3f}; with one unit removed:")
        for r in res.rows:
            print(f"  {r['unit']:10s} {r['value']:.3f}  [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    resnet, vgg = ([r["value"] for r in results[n].rows] for n in results)
    print(
        f"median accuracy after one removal: resnet {sorted(resnet)[len(resnet) // 2]:.3f}, "
        f"vgg {sorted(vgg)[len(vgg) // 2]:.3f} (chance 0.100)"
    )


if __name__ == "__main__":
    main()
