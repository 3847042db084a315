"""Labels by name: folder and CSV labels matched to the model's classes; indices stay indices."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import netlens
from netlens.data import as_dataset, as_loader, label_source, read_class_names
from netlens.errors import DataError, NetlensWarning
from netlens.preprocess import Preprocess

PRE = Preprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))


@pytest.fixture(scope="module")
def zoo_lens():
    return netlens.load("zoo:shapes-allconv", device="cpu")


@pytest.fixture
def val(tmp_path: Path, zoo_lens) -> Path:
    """The default model's five sample images in ``val/<class name>/``."""
    for p in zoo_lens.samples:
        folder = tmp_path / "val" / p.stem.rsplit("-", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    return tmp_path / "val"


def accuracy(lens, ds) -> float:
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    return float((lens.predict(x).argmax(1) == y).float().mean())


def test_folder_names_are_matched_to_the_model_classes(zoo_lens, val: Path) -> None:
    ds = zoo_lens.dataset(val)
    assert ds.label_source == "folder names matched to model classes"
    assert ds.classes == zoo_lens.classes
    truth = [zoo_lens.classes.index(f.parent.name) for f, _ in ds.items]
    assert [y for _, y in ds.items] == truth
    assert accuracy(zoo_lens, ds) == 1.0
    # the old rule (sorted folder names) is what a call without the model's classes still does
    assert as_dataset(val, zoo_lens.transform).label_source == "sorted folder names"


def test_case_and_separators_do_not_matter(zoo_lens, val: Path, tmp_path: Path) -> None:
    files = sorted(val.rglob("*.png"))
    rows = [f"{f.relative_to(tmp_path)},{f.parent.name.upper()}" for f in files]
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows))
    ds = zoo_lens.dataset(tmp_path / "list.csv")
    assert ds.label_source == "CSV labels matched to model classes"
    assert accuracy(zoo_lens, ds) == 1.0
    folder = tmp_path / "other"
    shutil.copytree(val / "star", folder / "Star")
    shutil.copytree(val / "cross", folder / "CROSS")
    assert accuracy(zoo_lens, zoo_lens.dataset(folder)) == 1.0


def test_unknown_folder_names_fail_with_one_line(zoo_lens, val: Path) -> None:
    (val / "squares").mkdir()
    shutil.copy(next((val / "square").iterdir()), val / "squares" / "x.png")
    (val / "kitten").mkdir()
    shutil.copy(next((val / "star").iterdir()), val / "kitten" / "y.png")
    with pytest.raises(DataError) as err:
        zoo_lens.dataset(val)
    msg = str(err.value)
    assert "\n" not in msg and "'squares' (closest: 'square'" in msg and "'kitten'" in msg
    assert "--label-map" in msg


def test_a_label_map_says_where_names_go(zoo_lens, val: Path, tmp_path: Path) -> None:
    (val / "circle").rename(val / "round")
    with pytest.raises(DataError, match="'round'"):
        zoo_lens.dataset(val)
    mapping = tmp_path / "map.csv"
    mapping.write_text("# data,model\nround,circle\n")
    lens = netlens.load("zoo:shapes-allconv", device="cpu", label_map=mapping)
    ds = lens.dataset(val)
    assert ds.label_source == "folder names matched to model classes via the label map"
    assert accuracy(lens, ds) == 1.0
    ds2 = as_dataset(val, lens.transform, classes=lens.classes, label_map={"round": 0})
    assert [y for _, y in ds2.items] == [y for _, y in ds.items]
    with pytest.raises(DataError, match="not a model class"):
        as_dataset(val, lens.transform, classes=lens.classes, label_map={"round": "oval"})


def test_csv_integers_stay_indices_of_a_1000_class_model(tmp_path: Path) -> None:
    labels = [285, 422, 657, 967]
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), 30 * i, np.uint8))
    (tmp_path / "list.csv").write_text(
        "\n".join(f"{i}.png,{k}" for i, k in enumerate(labels)) + "\n"
    )
    ds = as_dataset(tmp_path / "list.csv", PRE, classes=None, num_classes=1000)
    assert [ds[i][1] for i in range(4)] == labels and ds.label_source == "CSV integer indices"
    named = [f"c{i}" for i in range(1000)]
    assert as_dataset(tmp_path / "list.csv", PRE, classes=named).labels.tolist() == labels
    with pytest.raises(DataError, match="out of range for a model with 500 classes") as err:
        as_dataset(tmp_path / "list.csv", PRE, classes=None, num_classes=500)
    assert "\n" not in str(err.value)


def test_a_model_without_names_keeps_sorted_order_and_says_so(val: Path) -> None:
    with pytest.warns(NetlensWarning, match="no class names"):
        ds = as_dataset(val, PRE, classes=None)
    assert ds.classes == sorted(p.name for p in val.iterdir())
    assert ds.label_source == "sorted folder names (model has no class names)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_dataset(val, PRE)  # no model involved: nothing to warn about


def test_named_dataset_is_renumbered_to_the_model_order() -> None:
    from netlens.data.shapes import CLASSES

    order = list(reversed(CLASSES))
    ds = as_dataset("shapes", PRE, split="val", classes=order)
    own = as_dataset("shapes", PRE, split="val")
    assert [order[k] for k in ds.labels[:50]] == [CLASSES[k] for k in own.labels[:50]]
    assert ds.label_source == "dataset 'shapes' class names matched to model classes"
    with pytest.raises(DataError, match="dataset 'shapes' class names the model does not have"):
        as_dataset("shapes", PRE, split="val", classes=[str(d) for d in range(10)])


def test_limits_and_pairs_keep_the_label_source(val: Path, zoo_lens) -> None:
    loader = as_loader(val, zoo_lens.transform, classes=zoo_lens.classes, limit=2)
    assert label_source(loader) == "folder names matched to model classes"
    pair = as_dataset((torch.zeros(3, 3, 8, 8), torch.tensor([0, 2, 1])), classes=["a", "b", "c"])
    assert label_source(pair) == "(images, labels) pair: class indices"
    with pytest.raises(DataError, match="out of range"):
        as_dataset((torch.zeros(2, 3, 8, 8), torch.tensor([0, 5])), classes=["a", "b"])


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("cat\ndog\n\n", ["cat", "dog"]),
        ('["cat", "dog"]', ["cat", "dog"]),
        ('{"1": "dog", "0": "cat"}', ["cat", "dog"]),
    ],
)
def test_class_names_files(tmp_path: Path, text: str, names: list[str]) -> None:
    path = tmp_path / "classes.txt"
    path.write_text(text)
    assert read_class_names(path) == names


def test_bad_class_names_fail_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "gap.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(DataError, match="1 is missing"):
        read_class_names(tmp_path / "gap.json")
    with pytest.raises(DataError, match="not found"):
        read_class_names(tmp_path / "nope.txt")
    assert read_class_names("cat, dog") == ["cat", "dog"]


def test_a_pipe_or_folder_as_class_names_or_label_map_is_named_as_such(tmp_path: Path) -> None:
    import os

    from netlens.data.labels import read_label_map

    fifo = tmp_path / "names.fifo"
    os.mkfifo(fifo)  # reading it would wait for a writer forever: it must not be opened
    for source in (fifo, tmp_path):
        with pytest.raises(DataError, match="folder, pipe or device, not a file"):
            read_class_names(source)
        with pytest.raises(DataError, match="folder, pipe or device, not a file"):
            read_label_map(source)


def test_folders_named_by_numbers_are_class_indices(tmp_path):
    """``val/0 … val/11`` for a model without class names: numbered in text order, folder 10
    was class 2 and folder 2 class 4. Numbers are class indices now, as in a CSV, and a warning
    says how to ask for the text order."""
    from torch import nn

    for k in range(12):
        (tmp_path / str(k)).mkdir()
        cv2.imwrite(str(tmp_path / str(k) / "a.png"), np.full((8, 8, 3), 20 * k, np.uint8))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 12))
    with pytest.warns(NetlensWarning, match=r"read as class indices .*--classes 0,1,10,11"):
        ds = netlens.load(net.eval()).dataset(tmp_path)
    assert {p.parent.name: y for p, y in ds.items} == {str(k): k for k in range(12)}
    assert ds.label_source == "folder names as class indices"
    text_order = sorted(str(k) for k in range(12))  # what the warning suggests: ImageFolder's
    ds = netlens.load(net.eval(), classes=text_order).dataset(tmp_path)
    assert {p.parent.name: y for p, y in ds.items} == {n: i for i, n in enumerate(text_order)}


def test_numbered_folders_read_the_same_whatever_other_folders_there_are(tmp_path):
    """``val/0, 2, 4`` (a split holding 3 of a 12-class model's classes) were numbered 0, 1, 2
    (folder 4 was class 2), but add ``val/10`` and they were class indices (folder 4 was class
    4). Numbers are class indices either way; numbers past the model's outputs cannot be, and
    are ImageFolder's text-order positions, with a warning."""
    from torch import nn

    def folders(root, names):
        for k in names:
            (root / k).mkdir(parents=True)
            cv2.imwrite(str(root / k / "a.png"), np.full((8, 8, 3), 9, np.uint8))
        return root

    def net(outputs):
        torch.manual_seed(0)
        body = [nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, outputs)]
        return nn.Sequential(*body).eval()

    lens = netlens.load(net(12))
    for names in (["0", "2", "4"], ["0", "2", "4", "10"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = lens.dataset(folders(tmp_path / "-".join(names), names))
        assert {p.parent.name: y for p, y in ds.items}["4"] == 4
        assert ds.label_source == "folder names as class indices"
    # a 3-output model trained with ImageFolder on folders 1, 10, 2: positions in text order
    with pytest.warns(NetlensWarning, match="past the model's 3 outputs.*text order"):
        ds = netlens.load(net(3)).dataset(folders(tmp_path / "imagefolder", ["1", "2", "10"]))
    assert {p.parent.name: y for p, y in ds.items} == {"1": 0, "10": 1, "2": 2}
    assert ds.label_source == "sorted folder names (ImageFolder order)"


def test_torchvision_mnist_class_names_match_digits_or_words() -> None:
    """torchvision's MNIST names its classes '0 - zero' ... '9 - nine': matched by the part
    that names a model class (its digits, or its words), never by a part two classes share."""
    from netlens.data.labels import match_names

    mnist = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four"]
    digits = [str(k) for k in range(10)]
    words = ["zero", "one", "two", "three", "four"]
    assert match_names(mnist, digits).index == {n: k for k, n in enumerate(mnist)}
    assert match_names(mnist, words).index == {n: k for k, n in enumerate(mnist)}
    assert "by a part of its name" in match_names(mnist, digits).source
    with pytest.raises(DataError, match="'cat - dog'"):
        match_names(["cat - dog"], ["cat", "dog"])  # both parts are classes: which one?
    with pytest.raises(DataError, match="does not have"):
        match_names(["1 - one", "1 - uno"], digits)  # two names for one class
    with pytest.raises(DataError, match="does not have"):
        match_names(["1", "1 - one"], digits)  # '1' took class 1 already


def test_fashion_mnist_names_match_the_zoo_models_classes() -> None:
    """torchvision's FashionMNIST names class 0 'T-shirt/top', the Hugging Face Hub's
    ClassLabel 'T - shirt / top': both were refused for the zoo's Fashion-MNIST models
    ("class names the model does not have: 'T-shirt/top' (closest: 't-shirt', 'shirt')")."""
    from torchvision.datasets import FashionMNIST

    import netlens
    from netlens.data.labels import match_names

    zoo = netlens.load("zoo:fmnist-resnet").classes
    hub = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt"]
    hub += ["Sneaker", "Bag", "Ankle boot"]
    for names in (FashionMNIST.classes, hub):
        assert match_names(names, zoo).index == {n: k for k, n in enumerate(names)}
    with pytest.raises(DataError, match="does not have"):
        match_names(["shirt/top", "shirt"], ["shirt", "top"])  # both parts are classes


def test_a_class_to_idx_json_is_class_names(tmp_path: Path) -> None:
    """``json.dump(train_data.class_to_idx, f)`` writes ``{name: index}``; it was refused
    ("needs integer keys"), and for folders named by numbers (``{"1": 0, "10": 1}``) it would
    have been read backwards, as indices 1 and 10. JSON numbers as values tell it apart."""
    cases = {
        "c2i.json": ({"cat": 1, "ant": 0, "dog": 2}, ["ant", "cat", "dog"]),
        "numbers.json": ({"1": 0, "10": 1, "2": 2}, ["1", "10", "2"]),
        "i2c.json": ({"0": "1", "1": "10"}, ["1", "10"]),
    }
    for name, (data, names) in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        assert read_class_names(tmp_path / name) == names
    (tmp_path / "same.json").write_text(json.dumps({"a": 0, "b": 0}))
    with pytest.raises(DataError, match="two classes have the same index"):
        read_class_names(tmp_path / "same.json")
    (tmp_path / "words.json").write_text(json.dumps({"a": "x"}))
    with pytest.raises(DataError, match="maps indices to names"):
        read_class_names(tmp_path / "words.json")
