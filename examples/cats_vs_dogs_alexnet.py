"""Explain a cats-vs-dogs AlexNet: torchvision's AlexNet whose last layer became Linear(4096, 2).

    python examples/cats_vs_dogs_alexnet.py [MODEL.pt] [IMAGES...] [--out DIR]

MODEL.pt is the state_dict you saved after fine-tuning (``torch.save(model.state_dict(), ...)``).
Without one, a randomly initialised model is created first, because nothing can be downloaded
here: its maps mean nothing, but every step is the one you would run on your own file. Without
IMAGES, scikit-image's photo of a cat is used. The command-line equivalent:

    netlens cam MODEL.pt cat.jpg --arch tv:alexnet --target 0
    netlens report MODEL.pt cat.jpg --arch tv:alexnet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import netlens


def stand_in_model(path: Path) -> Path:
    """A randomly initialised cats-vs-dogs AlexNet, saved as a state_dict."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    model.classifier[6] = nn.Linear(4096, 2)
    torch.save(model.state_dict(), path)
    print(f"no model given: saved a randomly initialised cats-vs-dogs AlexNet to {path}")
    return path


def cat_photo(path: Path) -> Path:
    """scikit-image's cat ("chelsea") as a JPEG file."""
    import cv2
    import skimage.data

    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="state_dict file (.pt/.pth/.safetensors)")
    parser.add_argument("images", nargs="*", help="image files or folders")
    parser.add_argument("--out", default="netlens-out/cats-vs-dogs", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = Path(args.model) if args.model else stand_in_model(out / "catsdogs-alexnet.pt")
    images = args.images or [str(cat_photo(out / "cat.jpg"))]
    lens = netlens.load(model, arch="tv:alexnet")  # 2 classes, read off the head
    lens.classes = ["cat", "dog"]
    res = lens.cam(images, target="cat")
    for row in res.rows():
        print(f"  {row['image']}: p(cat) = {row['probability']:.1%}")
    res.save(out)
    report = lens.report(images, sections="card,cam,kernels,features", out=out)
    print(f"wrote {out}/ and {report.path}")


if __name__ == "__main__":
    main()
