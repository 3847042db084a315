"""The analyses the distributed tests run, shared by the test (one process) and its workers.

A timm resnet18 (random weights, BatchNorm randomised) on 32-pixel generated shapes: 23 images,
so batches of 4 leave an uneven tail and two ranks get 12 and 11 images.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

N_IMAGES = 23

JOBS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # job: (analyzer, inputs, options)
    "stats": ("stats", "data", {"batch_size": 4, "bins": 20, "limit": None}),
    "stats-range": ("stats", "data", {"batch_size": 5, "hist_range": "0,2", "limit": None}),
    "top": (
        "top-activations",
        "data",
        {"layer": "layer3", "k": 3, "batch_size": 4, "max_channels": 3, "limit": None},
    ),
    "evaluate": (
        "evaluate",
        "data",
        {"methods": "gradcam", "metrics": "pointing,energy,deletion", "steps": 4, "chunk": 4},
    ),
    "cam": ("cam", "images", {"method": "gradcam", "chunk": 5}),
    "sanity": ("sanity", "images", {"method": "gradcam"}),
    "ablate-blocks": ("ablate", "data", {"metric": "loss", "batch_size": 4, "resamples": 200}),
    "ablate-channels": (
        "ablate",
        "data",
        {"layers": "layer2.0.conv1", "channels": "0,3,5,9", "metric": "prob", "points": 3,
         "batch_size": 4, "resamples": 200},
    ),
    "ablate-noise": (
        "ablate",
        "data",
        {"layers": "layer1.*", "mode": "noise", "metric": "kl", "batch_size": 4,
         "resamples": 200},
    ),
    "ablate-mean": (
        "ablate",
        "data",
        {"layers": "layer3.*", "mode": "mean", "metric": "loss", "batch_size": 4,
         "resamples": 200},
    ),
}  # fmt: skip


def make_fixture(folder: Path) -> tuple[Path, Path]:
    """Write the model checkpoint and the shapes folder (with masks) into ``folder``."""
    import timm
    import torch

    import netlens
    from netlens.data.shapes import write_folder
    from netlens.images import Preprocess
    from netlens.lens import Lens

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(1 + 0.2 * torch.rand(m.num_features, generator=g))
    classes = ["circle", "square", "triangle", "star", "cross"]
    lens = Lens(model.eval(), Preprocess(size=(32, 32)), classes, name="r18")
    path = netlens.save(lens, folder / "r18.pt", arch="resnet18")
    data, _ = write_folder(folder / "shapes", n=N_IMAGES, size=32, seed=5)
    return path, data


def run_job(lens: Any, job: str, data: Path, **kwargs: Any) -> Any:
    """Run one job on ``lens`` (kwargs: ``group``, ``strict``, ablation's ``out``...).

    ``resume:JOB``: JOB resumed from the rows in the folder ``resume`` next to ``data``;
    ``keep:JOB``: its rows kept in the folder ``kept``.
    """
    from netlens.images import list_images

    if job.startswith("resume:"):
        job = job.split(":", 1)[1]
        kwargs |= {"out": data.parent / "resume", "resume": True}
    elif job.startswith("keep:"):
        job = job.split(":", 1)[1]
        kwargs |= {"out": data.parent / "kept"}
    analyzer, takes, options = JOBS[job]
    inputs = data if takes == "data" else [str(p) for p in list_images(data)]
    return lens.run(analyzer, inputs, **kwargs, **options)


def essence(result: Any) -> dict[str, Any]:
    """What must not depend on the number of processes: arrays, table, meta without timings
    (and without the number of rows a resumed ablation found)."""
    skip = ("run", "cost_per_image", "resumed")
    meta = {k: v for k, v in result.meta.items() if k not in skip}
    return {"arrays": dict(result.arrays), "table": result.table, "meta": meta}


def dump(obj: Any, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj))
