"""netlens quick start as a script: explain the bundled model's sample images, keep everything.

    python examples/quick_start.py [--out netlens-out/quick-start]

Loads the default zoo model, runs Grad-CAM on its sample images, prints what it predicted,
saves the overlays, figures, JSON and CSV, and writes a short HTML report next to them.
"""

from __future__ import annotations

import argparse

import netlens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="netlens-out/quick-start", help="output folder")
    args = parser.parse_args()

    lens = netlens.load()  # netlens.load("model.pt", arch="resnet18") for your own model
    res = lens.cam()
    print(res)
    for row in res.rows():
        print(
            f"  {row['image']}: {row['prediction_name']} ({row['prediction_probability']:.1%}), "
            f"map of {row['target_name']}"
        )
    files = res.save(args.out)
    report = lens.report(
        sections="card,cam,kernels,features", methods="gradcam,layercam", out=args.out
    )
    print(f"wrote {len(files)} files to {args.out}/ and the report {report.path}")


if __name__ == "__main__":
    main()
