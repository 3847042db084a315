"""Left-list items (sweep 14b): the ablate table's label source, headless stacks' auto feature
layer, sanity's regression wording, the missing-mask message and save's ``output=``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netlens

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root, n: int = 12, size: int = 16) -> None:
    gen = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.png"), gen.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _saved_resnet(path, **save_kwargs):  # noqa: ANN001, ANN003, ANN202
    from netlens.models.archs import resnet

    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "in_chans": 3, "img_size": 16, "widths": [4, 8], "blocks": [1, 1]}
    model = resnet(**kwargs).eval()
    return netlens.save(model, path, arch="resnet", arch_kwargs=kwargs, **save_kwargs)


def test_ablate_table_says_where_the_labels_came_from(tmp_path) -> None:
    from netlens.cli.app import app

    path = _saved_resnet(tmp_path / "m.pt", classes=["class0", "class1", "class2"])
    _folder(tmp_path / "data")
    args = ["ablate", str(path), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*args, "--mode", "zero", "--json"])
    assert res.exit_code == 0, res.output
    source = json.loads(res.stdout)["label_source"]
    assert source
    res = CliRunner().invoke(app, [*args, "--mode", "zero"])
    assert res.exit_code == 0, res.output
    assert f"labels: {source}" in " ".join(res.stdout.split()), res.stdout


def _stack(*tail: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    convs = [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
    ]
    return nn.Sequential(*convs, *tail).eval()


@pytest.mark.parametrize(
    ("tail", "expected"),
    [((nn.ReLU(),), "4"), ((nn.ReLU(inplace=True),), "4"), ((nn.ReLU(), nn.MaxPool2d(2)), "4")],
)
def test_headless_stack_features_auto_is_the_last_relu(tail, expected) -> None:
    """A headless stack's output is its features, not a segmentation head's logits: auto
    shows the last conv block's (post-ReLU) maps, not the block before it."""
    lens = netlens.Lens(_stack(*tail))
    result = lens.features(torch.rand(1, 3, 32, 32), layer="auto", top=4)
    assert result.meta["layers"] == [expected]
