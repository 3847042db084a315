"""Evaluate every shipped zoo model on its test split and compare with its target accuracy.

This loads the weights from the package (not the number written in the card) and runs the whole
test split through them::

    python benchmarks/zoo_accuracy.py            # all models
    python benchmarks/zoo_accuracy.py --limit 500 shapes-allconv
    python benchmarks/zoo_accuracy.py --json

Exit status 1 when a model misses its target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from netlens.models import zoo
from netlens.plugins.manager import PluginHost
from netlens.train.datasets import make_loader
from netlens.train.evaluation import evaluate


def measure(name: str, host: PluginHost, limit: int | None = None) -> dict:
    """Accuracy and macro F1 of zoo model ``name`` on (the first ``limit`` of) its test split."""
    lens = zoo.load_zoo(name, host=host, device="cpu")
    ds = host.datasets.get(lens.card["data"])(split="test").with_preprocess(lens.transform)
    if limit is not None and limit < len(ds):
        ds = type(ds)(ds.images[:limit], ds.labels[:limit], ds.classes, ds.preprocess, None)
    loader = make_loader(ds, 256, shuffle=False, workers=0, pin=False)
    start = time.perf_counter()
    lens.model.eval()
    metrics = evaluate(lens.model, loader, len(lens.classes))
    secs = time.perf_counter() - start
    card_acc = (lens.card.get("test") or {}).get("accuracy")
    target = lens.card.get("target_accuracy")
    return {
        "name": name,
        "data": lens.card["data"],
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "f1": metrics["f1"],
        "target": target,
        "card_accuracy": card_acc,
        "passed": target is None or metrics["accuracy"] >= target,
        "seconds": round(secs, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="zoo test-split accuracy vs targets")
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    host = PluginHost()
    rows = [measure(n, host, args.limit) for n in (args.names or zoo.names())]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"{'model':<18}{'data':<15}{'n':>7}{'accuracy':>10}{'target':>9}{'card':>9}"
            f"{'F1':>7}  result"
        )
        for r in rows:
            print(
                f"{r['name']:<18}{r['data']:<15}{r['n']:>7}{r['accuracy']:>10.2%}"
                f"{r['target'] or 0:>9.0%}{r['card_accuracy'] or 0:>9.2%}{r['f1']:>7.3f}  "
                f"{'PASS' if r['passed'] else 'MISS'}"
            )
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
