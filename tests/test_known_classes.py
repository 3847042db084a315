"""ImageNet class names for timm and torchvision classifiers with ImageNet heads: names from
the installed packages, folders and targets by WordNet ID or lemma, ``--classes`` still wins."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import timm
import torch
import torchvision
from timm.data import ImageNetInfo
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.data.labels import normalize_name
from netlens.models.known_classes import ClassNames, known_class_names

runner = CliRunner()
TENCH, TABBY = "n01440764", "n02123045"


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18").eval()


def test_imagenet_1k_names_follow_the_output_order(resnet):
    names = known_class_names(resnet)
    assert isinstance(names, ClassNames) and len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[281] == "tabby"
    assert "guessed from the 1000 outputs" in names.source
    # the same order as timm's own WordNet lemmas: every name is a lemma of its class but two,
    # which torchvision disambiguated ("crane bird", "maillot tank suit")
    described = ImageNetInfo().label_descriptions()
    lemmas = [{normalize_name(w) for w in d.split(",")} for d in described]
    off = [names[i] for i in range(1000) if normalize_name(names[i]) not in lemmas[i]]
    assert off == ["crane bird", "maillot tank suit"]
    assert names.find(TENCH) == 0 and names.find("Tinca tinca") == 0 and names.find("TABBY") == 281
    assert names.find("crane") == 517 and names.find("crane bird") == 134  # torchvision's names
    assert names.find("tree-frog") == names.index("tree frog")  # lemmas: "tree frog, tree-frog"
    ours = {normalize_name(n) for n in names}
    shared = {w for s in lemmas for w in s if sum(w in t for t in lemmas) > 1} - ours
    assert {"panther", "panda", "wagon"} <= shared
    assert all(names.find(w) is None for w in shared)  # a lemma of two classes names neither


def test_only_imagenet_heads_of_timm_and_torchvision_get_names():
    assert known_class_names(torchvision.models.resnet18(num_classes=10)) is None
    assert known_class_names(nn.Sequential(nn.Flatten(), nn.Linear(12, 1000))) is None
    squeeze = known_class_names(torchvision.models.squeezenet1_1())  # 1×1 conv head
    assert squeeze is not None and squeeze[1] == "goldfish"
    big = known_class_names(timm.create_model("resnet18", num_classes=11821))
    assert big is not None and len(set(big)) == 11821 and big.find(TENCH) is not None


def photos(root, folders: list[str]) -> None:
    from skimage import data

    for name, img in zip(folders, (data.astronaut(), data.chelsea(), data.coffee()), strict=False):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.jpg"), img[..., ::-1])


def test_imagenet_folders_match_by_wordnet_id_or_name(resnet, tmp_path):
    """ImageNet's own layout (WordNet-ID folders), a subset of it, mixed with a named folder."""
    photos(tmp_path, [TENCH, TABBY, "goldfish"])
    lens = netlens.Lens(resnet)
    ds = lens.dataset(tmp_path)
    labels = {path.parent.name: label for path, label in ds.items}
    assert labels == {TENCH: 0, TABBY: 281, "goldfish": 1}
    assert ds.label_source == "folder names matched to model classes"


def test_targets_by_wordnet_id_and_explicit_classes_win(resnet, tmp_path):
    photos(tmp_path, [TABBY])
    img = tmp_path / TABBY / "a.jpg"
    lens = netlens.Lens(resnet)
    assert lens.class_index(TABBY, 1000) == 281 and lens.class_index("tabby cat", 1000) == 281
    own = netlens.Lens(resnet, classes=[f"c{i}" for i in range(1000)])
    assert own.classes[281] == "c281" and not isinstance(own.classes, ClassNames)
    path = tmp_path / "r18.pt"
    torch.save(resnet.state_dict(), path)
    out = tmp_path / "out"
    args = ["cam", str(path), str(img), "--arch", "resnet18", "--target", TABBY, "-q"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "cam.json").read_text())
    assert summary["images"][0]["target"] == 281
    assert summary["images"][0]["target_name"] == "tabby"
    assert "guessed" in summary["run"]["model"]["class_names"]
    assert np.load(out / "a_gradcam_layer4_tabby.npy").shape == (224, 224)


def test_saved_lens_guesses_again_on_load(resnet, tmp_path):
    """Guessed names are not stored as if given: the loaded model keeps the WordNet IDs."""
    netlens.save(netlens.Lens(resnet), tmp_path / "ck.pt", arch="resnet18")
    back = netlens.load(tmp_path / "ck.pt")
    assert isinstance(back.classes, ClassNames) and back.classes.find(TABBY) == 281
    named = netlens.Lens(resnet, classes=[f"c{i}" for i in range(1000)])
    netlens.save(named, tmp_path / "named.pt", arch="resnet18")
    assert netlens.load(tmp_path / "named.pt").classes[281] == "c281"
