"""The bundled zoo: cards, samples, loading by name, the default model, and `netlens zoo`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError
from netlens.models import zoo

CARD_KEYS = {
    "arch",
    "arch_kwargs",
    "classes",
    "preprocess",
    "data",
    "command",
    "epochs",
    "test",
    "device",
    "wall_time_s",
    "images_per_s",
    "target_accuracy",
}


@pytest.fixture(scope="module")
def default_lens():
    return zoo.load_zoo(None, device="cpu")


def test_zoo_has_at_least_four_small_models() -> None:
    names = zoo.names()
    assert len(names) >= 4 and zoo.DEFAULT in names
    total = 0
    for name in names:
        folder = zoo.model_dir(name)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 6 * 2**20, name
        total += size
    assert total < 15 * 2**20


@pytest.mark.parametrize("name", zoo.names())
def test_cards_are_complete_and_match_the_weights(name: str) -> None:
    card = zoo.info(name)
    assert CARD_KEYS <= set(card)
    assert card["arch_kwargs"]["num_classes"] == len(card["classes"])
    assert card["command"].startswith("netlens train --recipe " + name)
    assert 0 < card["test"]["accuracy"] <= 1 and card["test"]["n"] > 0
    assert 3 <= len(card["samples"]) <= 6
    state = load_file(card["path"] + "/model.safetensors")
    lens = zoo.load_zoo(name, device="cpu")
    for k, v in lens.model.state_dict().items():
        assert torch.equal(v, state[k])
    assert lens.name == name and lens.card["arch"] == card["arch"]
    used = lens.transform.to_dict()
    assert {k: used[k] for k in card["preprocess"]} == card["preprocess"]
    assert used["source"] == f"netlens zoo card of {name}"
    assert lens.classes == card["classes"] and lens.samples
    # samples are real test images of their class: the model gets most of them right
    probs = lens.predict(lens.samples)
    truth = [lens.classes.index(p.stem.rsplit("-", 1)[0]) for p in lens.samples]
    hits = (probs.argmax(1).numpy() == np.array(truth)).mean()
    assert hits >= 0.6


def test_default_model_is_the_cam_ready_shapes_net(default_lens) -> None:
    assert default_lens.name == zoo.DEFAULT
    assert default_lens.card["arch"] == "allconv" and default_lens.transform.channels == 3
    assert min(default_lens.transform.size) >= 64
    assert isinstance(default_lens.model.classifier, torch.nn.Conv2d)
    masks = [zoo.sample_mask(zoo.DEFAULT, p) for p in default_lens.samples]
    assert all(m is not None for m in masks)
    for img_path, mask_path in zip(default_lens.samples, masks, strict=True):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        img = cv2.imread(str(img_path))
        assert mask.shape == img.shape[:2] and 0 < (mask > 127).mean() < 0.5


def test_default_model_accuracy_on_a_test_subset(default_lens) -> None:
    from netlens.data.shapes import shapes_dataset

    ds = shapes_dataset("test", n=300)  # 300 images drawn with the test seed (never trained on)
    x = torch.stack([default_lens.transform(img) for img in ds.images])
    pred = default_lens.predict(x).argmax(1).numpy()
    assert (pred == ds.labels).mean() >= 0.95


def test_zoo_names_work_as_model_paths() -> None:
    lens = netlens.load("zoo:" + zoo.DEFAULT)
    assert lens.name == zoo.DEFAULT and lens.samples
    assert netlens.load().name == zoo.DEFAULT
    with pytest.raises(ModelLoadError, match=f"did you mean '{zoo.DEFAULT}'"):
        netlens.load("zoo:" + zoo.DEFAULT.replace("-", ""))


def test_cli_zoo_list_and_info() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "list", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["default"] == zoo.DEFAULT
    assert {m["name"] for m in doc["models"]} == set(zoo.names())
    res = runner.invoke(app, ["zoo", "info", zoo.DEFAULT, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["arch"] == "allconv"
    res = runner.invoke(app, ["zoo", "info", zoo.DEFAULT])
    assert res.exit_code == 0 and "command" in res.output and "test" in res.output
    res = runner.invoke(app, ["zoo", "info", "shapes"])
    assert res.exit_code == 1 and "no zoo model 'shapes'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_zoo_model_is_a_model_folder_read_by_the_same_loaders(tmp_path) -> None:
    """The zoo goes through the loaders (its card validated like any checkpoint's), and a copy
    of a zoo folder anywhere loads the same way; a damaged card is one line."""
    import shutil

    import torch

    from netlens.errors import ModelLoadError

    name = zoo.DEFAULT
    copy = tmp_path / "mymodel"
    shutil.copytree(zoo.model_dir(name), copy)
    a, b = netlens.load(f"zoo:{name}"), netlens.load(copy)
    assert a.classes == b.classes and a.default_data() == b.default_data()
    x = a.example(2)
    assert torch.equal(a.model(x), b.model(x))
    card = json.loads((copy / "card.json").read_text())
    card["arch_kwargs"] = {"checkpoint_path": "/etc/passwd"}  # the validator must see it
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="checkpoint_path"):
        netlens.load(copy)
    (copy / "card.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="damaged"):
        netlens.load(copy)
