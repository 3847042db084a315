"""Class names saved with a model by its author: ImageFolder's ``class_to_idx`` in the checkpoint
or on the model, ``idx_to_class``, Lightning's ``hyper_parameters``; and the architecture a
fine-tuning checkpoint names, in torchvision's layout as well as timm's."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import netlens
from netlens.errors import NetlensWarning
from netlens.models.recorded_classes import as_names

NUMBERS = [str(k) for k in range(1, 13)]
TEXT_ORDER = sorted(NUMBERS)  # ImageFolder's: 1, 10, 11, 12, 2, ...


def _folders(root: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.png"), np.full((40, 40, 3), 15 * k, np.uint8))
    return root


def test_class_to_idx_saved_by_a_fine_tuning_script_names_the_outputs(tmp_path: Path) -> None:
    """The flowers-tutorial checkpoint: ``{"arch", "class_to_idx", "state_dict"}`` of a
    torchvision model trained on folders named by numbers. Folder '10' was output 1 and folder
    '2' output 4 (text order); read as numbers they would be 10 and 2, wrongly. The checkpoint's
    'arch' is torchvision's EfficientNet (timm's of that name names its weights otherwise)."""
    torch.manual_seed(0)
    net = torchvision.models.efficientnet_b0(num_classes=12).eval()
    ckpt = {
        "arch": "efficientnet_b0",
        "class_to_idx": {name: i for i, name in enumerate(TEXT_ORDER)},
        "state_dict": net.state_dict(),
        "epochs": 3,
    }
    torch.save(ckpt, tmp_path / "flowers.pth")
    lens = netlens.load(tmp_path / "flowers.pth")
    assert lens.card["arch"] == "tv:efficientnet_b0"
    assert list(lens.classes) == TEXT_ORDER
    assert lens.classes.source == "flowers.pth's 'class_to_idx'"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lens.model(x), net(x))
    data = _folders(tmp_path / "val", ["2", "10", "12"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no word of numbers read as class indices
        ds = lens.dataset(data)
    assert {p.parent.name: y for p, y in ds.items} == {"2": 4, "10": 1, "12": 3}
    assert ds.label_source == "folder names matched to model classes"


def test_idx_to_class_and_lightning_hyper_parameters(tmp_path: Path) -> None:
    net = torchvision.models.resnet18(num_classes=3).eval()
    names = ["cat", "dog", "bird"]
    torch.save(
        {"state_dict": net.state_dict(), "idx_to_class": {str(i): n for i, n in enumerate(names)}},
        tmp_path / "a.pth",
    )
    lightning = {
        "epoch": 3,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"num_classes": 3, "lr": 1e-3, "class_names": names},
    }
    torch.save(lightning, tmp_path / "b.ckpt")
    a = netlens.load(tmp_path / "a.pth", arch="tv:resnet18")
    b = netlens.load(tmp_path / "b.ckpt", arch="tv:resnet18")
    assert list(a.classes) == list(b.classes) == names
    assert b.classes.source == "b.ckpt's 'hyper_parameters.class_names'"
    assert b.cam(torch.rand(1, 3, 64, 64), target="bird").targets == [2]


def test_class_to_idx_set_on_the_model(tmp_path: Path) -> None:
    """``model.class_to_idx = train_data.class_to_idx``, then the model passed in Python or
    pickled whole (alone, or in a dict beside its class_to_idx)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    net.class_to_idx = {"dog": 1, "cat": 0}
    assert list(netlens.load(net.eval()).classes) == ["cat", "dog"]
    assert list(netlens.load(net, classes=["x", "y"]).classes) == ["x", "y"]  # told wins

    class Module(nn.Module):  # a LightningModule keeps save_hyperparameters() in _hparams
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
            self._hparams = {"lr": 0.1, "class_names": ["p", "q", "r"]}

        def forward(self, x):
            return self.model(x)

    lens = netlens.load(Module().eval())
    assert list(lens.classes) == ["p", "q", "r"]
    assert lens.classes.source == "the model's '_hparams.class_names'"
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    torch.save({"model": plain, "class_to_idx": {"no": 0, "yes": 1}}, tmp_path / "m.pth")
    lens = netlens.load(tmp_path / "m.pth", trust=True)
    assert list(lens.classes) == ["no", "yes"]
    assert lens.classes.source == "m.pth's 'class_to_idx'"


def test_label_names_in_a_timm_models_pretrained_cfg() -> None:
    """``timm.create_model("hf-hub:someone/fine-tuned", pretrained=True)`` keeps the Hub
    config's labels in ``pretrained_cfg``; an ImageNet model's have no such entry."""
    import timm

    model = timm.create_model("resnet18", num_classes=3).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ["a", "b", "c"]}
    lens = netlens.load(model)
    assert list(lens.classes) == ["a", "b", "c"]
    assert lens.classes.source == "the model's 'pretrained_cfg.label_names'"
    imagenet = netlens.load(timm.create_model("resnet18").eval())
    assert imagenet.classes[0] == "tench"


def test_names_that_do_not_fit_the_model_are_not_used(tmp_path: Path) -> None:
    net = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(
        {"state_dict": net.state_dict(), "class_to_idx": {"a": 0, "b": 1}}, tmp_path / "c.pth"
    )
    with pytest.warns(NetlensWarning, match=r"'class_to_idx' holds 2 class names, but the model"):
        lens = netlens.load(tmp_path / "c.pth", arch="tv:resnet18")
    assert lens.classes is None


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"b": 1, "a": 0}, ["a", "b"]),  # class_to_idx
        ({1: "b", 0: "a"}, ["a", "b"]),  # idx_to_class
        ({"0": "10", "1": "2"}, ["10", "2"]),  # idx_to_class read from JSON, names of digits
        (["x", "y"], ["x", "y"]),
        ({"a": 0, "b": 2}, None),  # an index skipped
        ({"a": 0, "b": 0}, None),  # repeated
        ({"a": True, "b": False}, None),
        ({"a": "0", "b": "1"}, None),  # which side is the name? not a guess to make
        (10, None),  # a count
        ([0, 1, 2], None),
        (torch.tensor([0, 1]), None),
        ({}, None),
        ({"b": np.int64(1), "a": np.int64(0)}, ["a", "b"]),  # sklearn LabelEncoder's indices
        ({"b": torch.tensor(1), "a": torch.tensor(0)}, ["a", "b"]),
        (np.array(["x", "y"]), ["x", "y"]),
        ({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}, ["tench", "goldfish"]),
    ],
)
def test_what_reads_as_class_names(value: object, names: list[str] | None) -> None:
    assert as_names(value) == names


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"id2label": {0: "cat", 1: "dog", 2: "bird"}}, "'id2label'"),
        ({"label2id": {"cat": 0, "dog": 1, "bird": 2}}, "'label2id'"),
        ({"config": {"id2label": {"0": "cat", "1": "dog", "2": "bird"}}}, "'config.id2label'"),
        (  # a LightningDataModule that called save_hyperparameters()
            {"datamodule_hyper_parameters": {"class_names": ["cat", "dog", "bird"], "bs": 8}},
            "'datamodule_hyper_parameters.class_names'",
        ),
    ],
)
def test_label_maps_kept_beside_plain_weights(extra: dict, where: str, tmp_path: Path) -> None:
    """A transformers-style ``id2label`` saved beside a state_dict, and a Lightning DataModule's
    class names, were not read: outputs were explained by index."""
    net = torchvision.models.resnet18(num_classes=3)
    torch.save({"state_dict": net.state_dict(), **extra}, tmp_path / "c.pth")
    lens = netlens.load(tmp_path / "c.pth", arch="tv:resnet18")
    assert list(lens.classes) == ["cat", "dog", "bird"]
    assert lens.classes.source == f"c.pth's {where}"


def test_an_arch_both_libraries_name_alike_is_torchvisions_without_timms_options(
    tmp_path: Path,
) -> None:
    """pytorch/examples' ImageNet script saves ``{"epoch", "arch": "resnet18", "state_dict",
    "best_acc1"}`` of torchvision's model. timm's resnet18 has the same weight names, so it was
    built, with timm's preprocessing (bicubic, crop 0.95) instead of torchvision's (resize 256,
    crop 224). timm's own checkpoints carry their ``args``, and then timm's is built."""
    import argparse

    net = torchvision.models.resnet18(num_classes=3).eval()
    ckpt = {"epoch": 9, "arch": "resnet18", "state_dict": net.state_dict(), "best_acc1": 71.2}
    torch.save(ckpt, tmp_path / "checkpoint.pth.tar")
    lens = netlens.load(tmp_path / "checkpoint.pth.tar")
    assert lens.card["arch"] == "tv:resnet18"
    assert lens.transform.resize_size == (256, 256) and lens.transform.size == (224, 224)
    ckpt["args"] = argparse.Namespace(model="resnet18", num_classes=3)  # timm's train.py
    torch.save(ckpt, tmp_path / "timm.pth.tar")
    assert netlens.load(tmp_path / "timm.pth.tar").card["arch"] == "resnet18"


def test_class_files_as_editors_and_other_libraries_save_them(tmp_path: Path) -> None:
    """A BOM (Notepad, Excel's "CSV UTF-8") named the first class '\\ufeffcat'; PyTorch Hub's
    imagenet_classes.txt (two "crane"s) was refused; Keras' imagenet_class_index.json named
    every class by a list's repr; a checkpoint's numpy array of names was dropped."""
    net3 = torchvision.models.resnet18(num_classes=3).eval()
    (tmp_path / "c.txt").write_text("\ufeffcat\ndog\nbird\n", encoding="utf-8")
    (tmp_path / "c.json").write_text('\ufeff["cat", "dog", "bird"]', encoding="utf-8")
    for f in ("c.txt", "c.json"):
        assert list(netlens.load(net3, classes=tmp_path / f).classes) == ["cat", "dog", "bird"]
    (tmp_path / "map.csv").write_text("\ufeffkitty,cat\n", encoding="utf-8")
    lens = netlens.load(net3, classes="cat,dog,bird", label_map=tmp_path / "map.csv")
    assert lens.label_map == {"kitty": "cat"}

    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    first = [d.split(",")[0].strip() for d in info.label_descriptions()]  # Hub's text file
    assert first.count("crane") == 2
    (tmp_path / "imagenet_classes.txt").write_text("\n".join(first), encoding="utf-8")
    pairs = zip(info.label_names(), first, strict=True)
    keras = {str(i): [w, n] for i, (w, n) in enumerate(pairs)}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(keras), encoding="utf-8")
    net = torchvision.models.resnet18().eval()
    for f in ("imagenet_classes.txt", "imagenet_class_index.json"):
        lens = netlens.load(net, classes=tmp_path / f)
        assert lens.classes[281] == "tabby" and lens.class_index("n02123045", 1000) == 281
        assert lens.classes[134] == "crane (n02012849)"

    ckpt = {"state_dict": net3.state_dict(), "classes": np.array(["b", "a", "c"])}
    torch.save(ckpt, tmp_path / "m.pt")
    assert list(netlens.load(tmp_path / "m.pt", arch="tv:resnet18").classes) == ["b", "a", "c"]
