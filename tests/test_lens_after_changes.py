"""A lens kept in a notebook while the user changes the model: a training step, a new head.

The run header named the weights the lens first saw (its SHA-256 was computed once), and a
head re-made for 3 classes kept the 1000 ImageNet names (class 0 drawn as "tench").
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from conftest import randomize_bn
from skimage import data as photos
from torch import nn

import netlens
from netlens.errors import NetlensError, NetlensWarning
from netlens.provenance import model_digest


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()  # fmt: skip


def test_the_run_header_names_the_weights_the_run_used() -> None:
    model = _small()
    lens = netlens.load(model, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    photo = photos.chelsea()
    before = lens.cam(photo).meta["run"]["model"]["sha256"]
    assert before == model_digest(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(lens.preprocess(photo))[:, 0].sum().backward()
    optimizer.step()  # one training step in the notebook
    after = lens.cam(photo).meta["run"]["model"]["sha256"]
    assert after == model_digest(model) != before
    with torch.no_grad():
        model[4].weight.mul_(2)  # in place, same storage
    assert lens.digest() == model_digest(model) != after
    model[4] = nn.Linear(8, 4)  # a new head: new tensors
    assert lens.digest() == model_digest(model)


def test_names_read_off_the_model_go_when_its_head_is_replaced() -> None:
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("resnet18", num_classes=1000)).eval()
    lens = netlens.load(model, input_size=32)
    assert lens.classes[0] == "tench"
    model.reset_classifier(3)
    with pytest.warns(NetlensWarning, match="has 3 outputs, not the 1000"):
        result = lens.cam(photos.chelsea())
    assert lens.classes is None and result.target_name(0) in ("0", "1", "2")


def test_names_the_user_gave_are_refused_when_the_head_no_longer_fits() -> None:
    model = _small()
    names = ["cat", "dog", "fox", "owl"]
    lens = netlens.load(model, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, classes=names)
    assert lens.cam(photos.chelsea(), target="fox").target_name(0) == "fox"
    model[4] = nn.Linear(8, 3)
    with pytest.raises(NetlensError, match="3 outputs but 4 class names"):
        lens.cam(photos.chelsea())
    lens.classes = ["cat", "dog", "fox"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        assert lens.cam(photos.chelsea(), target="dog").target_name(0) == "dog"


def test_a_model_on_the_meta_device_is_one_line() -> None:
    """Built with device='meta' (or accelerate's init_empty_weights) it has no values:
    load took it, and cam/predict raised torch's "Tensor.item() cannot be called on meta
    tensors"."""
    from hostile_inputs import assert_one_clean_line

    with torch.device("meta"):
        model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(NetlensError, match="on the meta device") as err:
        netlens.load(model.eval(), input_size=32)
    assert_one_clean_line(str(err.value))


def test_two_threads_analysing_one_model_get_their_own_maps() -> None:
    """Hooks live on the shared modules: each thread's fired on the other's forward (wrong
    maps, "a dry forward ... failed (IndexError: pop from empty list)"), and the eval flags
    one saved were restored over the other's (a model in train() left in eval)."""
    import threading

    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("resnet18", num_classes=6))
    lens = netlens.load(model, input_size=48)
    images = [photos.astronaut(), photos.chelsea()]
    want = {k: lens.cam(images, target=[k, k + 1]).heatmaps for k in (0, 3)}
    for _ in range(3):
        model.train()
        got, errors = {}, []

        def work(k: int, got: dict = got, errors: list = errors) -> None:
            try:
                got[k] = lens.cam(images, target=[k, k + 1]).heatmaps
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(k,)) for k in want]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for k in want:
            assert abs(got[k] - want[k]).max() < 1e-5
        assert all(m.training for m in model.modules())
