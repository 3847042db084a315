"""A user's Dataset object that names its classes (torchvision's ``ImageFolder``, CIFAR): its
labels are moved to the model's classes of those names, as folder names are."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from hostile_inputs import assert_one_clean_line
from torch import nn

import netlens
from netlens.analyzers.inputs import resolve_data
from netlens.errors import DataError

skdata = pytest.importorskip("skimage.data", reason="needs scikit-image's photos")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    for name, img in (("cat", skdata.chelsea()), ("dog", skdata.astronaut())):
        (root / name).mkdir()
        for i in range(2):
            cv2.imwrite(str(root / name / f"{i}.png"), cv2.resize(img, (32, 32))[..., ::-1])
    return root


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()


def test_imagefolder_labels_follow_the_models_class_names(folder):
    """ImageFolder numbers cat 0 and dog 1; the model says dog 0, cat 1. Accuracy counts the
    model's predictions against the right classes (it compared them with ImageFolder's)."""
    ds = torchvision.datasets.ImageFolder(folder, transform=torchvision.transforms.ToTensor())
    net = model()
    lens = netlens.Lens(net, {"size": (32, 32)}, classes=["dog", "cat"])
    matched = lens.dataset(ds)
    assert [matched[i][1] for i in range(4)] == [1, 1, 0, 0]
    assert matched.label_source == "the Dataset's class names matched to model classes"
    with torch.no_grad():
        pred = net(torch.stack([ds[i][0] for i in range(4)])).argmax(1)
    by_hand = float((pred == torch.tensor([1, 1, 0, 0])).double().mean())
    study = lens.ablate(ds, layers="0", mode="zero")
    assert study.table[0]["value"] == pytest.approx(by_hand)


def test_a_dataloader_over_an_imagefolder_is_relabelled_batch_by_batch(folder):
    """The user's DataLoader keeps its batching (here 3, so a batch mixes classes); its labels
    are moved to the model's classes as they are drawn, as the Dataset's are."""
    ds = torchvision.datasets.ImageFolder(folder, transform=torchvision.transforms.ToTensor())
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batches = resolve_data(lens, loader, what="a test").loader(64)  # the loader's: 3 + 1
    assert [y.tolist() for _, y in batches] == [[1, 1, 0], [0]]
    by_dataset = lens.ablate(ds, layers="0", mode="zero").table[0]["value"]
    assert lens.ablate(loader, layers="0", mode="zero").table[0]["value"] == by_dataset


def test_names_the_model_does_not_have_say_so(folder):
    ds = torchvision.datasets.ImageFolder(folder, transform=torchvision.transforms.ToTensor())
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "horse"])
    with pytest.raises(DataError) as err:
        lens.dataset(ds)
    assert "'cat'" in assert_one_clean_line(str(err.value))
    mapped = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "horse"])
    mapped.label_map = {"cat": "horse"}
    assert [mapped.dataset(ds)[i][1] for i in range(4)] == [1, 1, 0, 0]


def test_datasets_without_names_or_models_without_names_are_left_alone(folder):
    ds = torchvision.datasets.ImageFolder(folder, transform=torchvision.transforms.ToTensor())
    assert netlens.Lens(model(), {"size": (32, 32)}).dataset(ds) is ds
    plain = torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])
    assert lens.dataset(plain) is plain


def test_netlens_own_datasets_pass_through_with_their_label_source(folder):
    """A dataset netlens made (labels already the model's) is not matched again: its
    ``label_source`` stays "folder names matched to model classes"."""
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])
    ours = lens.dataset(folder)
    assert lens.dataset(ours) is ours
    assert ours.label_source == "folder names matched to model classes"


def test_an_imagefolder_of_pil_images_is_preprocessed_as_the_model_needs(folder):
    """Without a transform, ImageFolder yields PIL images: torch's collate failed on them.
    Each is now preprocessed with the model's preprocessing, as the folder path would be."""
    raw = torchvision.datasets.ImageFolder(folder)  # no transform: PIL images
    lens = netlens.Lens(model(), {"size": (24, 24)}, classes=["dog", "cat"])
    by_path, by_object = lens.dataset(folder), lens.dataset(raw)
    for i in range(4):
        assert torch.equal(by_object[i][0], by_path[i][0]) and by_object[i][1] == by_path[i][1]
    for run in (
        lambda d: lens.ablate(d, layers="0", mode="zero").table[0]["value"],
        lambda d: lens.evaluate(d, metrics="deletion").arrays["gradcam/deletion/curve"].tolist(),
    ):
        assert run(raw) == run(folder)
    loader = torch.utils.data.DataLoader(raw, batch_size=2)
    with pytest.raises(DataError, match="pass the Dataset itself") as err:
        lens.ablate(loader, layers="0", mode="zero")
    assert_one_clean_line(str(err.value))


def test_evaluate_follows_the_models_classes_on_a_named_dataset(folder):
    """evaluate unwrapped the relabelled Dataset again and scored ImageFolder's numbering."""
    ds = torchvision.datasets.ImageFolder(folder, transform=torchvision.transforms.ToTensor())
    net = model()
    lens = netlens.Lens(net, {"size": (32, 32)}, classes=["dog", "cat"])
    curves = lens.evaluate(ds, metrics="deletion").arrays["gradcam/deletion/curve"]
    with torch.no_grad():
        p = torch.softmax(net(torch.stack([ds[i][0] for i in range(4)])), 1)
    assert np.allclose(curves[:, 0], p[torch.arange(4), torch.tensor([1, 1, 0, 0])], atol=1e-5)


class _Named(torch.utils.data.Dataset):
    """Items labelled with names, as many hand-written Datasets are: ``(image, "Cat")``."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.x = torch.rand(len(names), 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        return self.x[i], self.names[i]


def test_labels_given_as_names_are_matched_to_the_models_classes():
    """torch's collate cannot batch strings into labels: "too many dimensions 'str'"."""
    ds = _Named(["Cat", "dog", "cat", "DOG", "cat"])
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])
    matched = lens.dataset(ds)
    assert [matched[i][1] for i in range(5)] == [1, 0, 1, 0, 1]
    assert matched.label_source == "the Dataset's label names matched to model classes"
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batches = resolve_data(lens, loader, what="a test").loader(64)
    assert [y.tolist() for _, y in batches] == [[1, 0, 1], [0, 1]]
    with torch.no_grad():
        pred = lens.model(ds.x).argmax(1)
    by_hand = float((pred == torch.tensor([1, 0, 1, 0, 1])).double().mean())
    assert lens.ablate(loader, layers="0", mode="zero").table[0]["value"] == pytest.approx(by_hand)
    with pytest.raises(DataError, match="no class names to match them to") as err:
        netlens.Lens(model(), {"size": (32, 32)}).dataset(ds)
    assert_one_clean_line(str(err.value))
    with pytest.raises(DataError, match="'horse'"):
        lens.dataset(_Named(["cat", "horse"]))[1]


def test_label_tensors_of_other_kinds_are_named_or_taken():
    """Whole-number float labels (from a float array) are class indices; one-hot vectors were
    refused as "no class labels", which sent users looking for missing labels."""
    from netlens.errors import AnalyzerError

    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    ref = lens.ablate((x, y), layers="0", mode="zero").table[0]["value"]
    floats = torch.utils.data.TensorDataset(x, y.float())
    assert lens.ablate(floats, layers="0", mode="zero").table[0]["value"] == ref
    one_hot = torch.utils.data.TensorDataset(x, torch.eye(2)[y])
    with pytest.raises(AnalyzerError, match=r"labels of shape 6×2 \(one-hot or multi-hot"):
        lens.ablate(one_hot, layers="0", mode="zero")


def test_pil_images_labelled_with_names_are_both_preprocessed_and_matched():
    from PIL import Image

    class Pets(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return Image.fromarray(skdata.chelsea()), ["cat", "dog"][i]

    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])
    ds = lens.dataset(Pets())
    assert ds[0][0].shape == (3, 32, 32) and [ds[0][1], ds[1][1]] == [1, 0]


class DictItems(torch.utils.data.Dataset):
    """Items as Hugging Face ``datasets`` give them: ``{"image": PIL, "label": ...}`` (or a
    preprocessed ``{"pixel_values": tensor, "labels": ...}``)."""

    def __init__(self, base, image: str, label: str) -> None:  # noqa: ANN001
        self.base, self.keys = base, (image, label)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        image, label = self.base[i]
        return {self.keys[0]: image, self.keys[1]: label, "id": i}


def test_dict_items_are_read_as_image_and_label(folder):
    """Dict items crashed inside netlens (KeyError: 1); they are the pairs they hold now: the
    same accuracy as the pairs themselves, PIL images preprocessed, names matched, batches of
    a DataLoader over them too."""
    pairs = torchvision.datasets.ImageFolder(folder)  # PIL images, labels cat 0, dog 1
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])

    def loss(data) -> float:  # noqa: ANN001 - the labels' exact values count, unlike accuracy's
        return lens.ablate(data, layers="0", mode="zero", metric="loss").table[0]["value"]

    expected = loss(pairs)
    unmatched = DictItems(list(pairs), "image", "label")  # ImageFolder's numbering as indices
    assert loss(unmatched) != pytest.approx(expected)  # so the labels do count
    named = [(img, pairs.classes[y]) for img, y in pairs]  # labels as names
    tensors = torchvision.datasets.ImageFolder(folder, transform=lens.transform)
    relabelled = [(x, 1 - y) for x, y in tensors]  # the model's own indices
    for ds in (
        DictItems(named, "image", "label"),
        DictItems(relabelled, "pixel_values", "labels"),
        torch.utils.data.DataLoader(DictItems(relabelled, "pixel_values", "labels"), batch_size=3),
    ):
        assert loss(ds) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DataError) as err:
        lens.ablate(DictItems(named, "picture", "label"), layers="0", mode="zero")
    assert "'picture', 'label', 'id'" in assert_one_clean_line(str(err.value))


def test_a_hugging_face_dataset_is_matched_by_its_label_names(folder):
    """A ``datasets.Dataset`` is no torch Dataset: refused as "cannot use a Dataset as data;
    pass ... a Dataset". Its rows (dicts) are read now, its ClassLabel names matched to the
    model's: the same loss as the folder itself gives."""
    datasets = pytest.importorskip("datasets", reason="needs the bench extras")
    pairs = torchvision.datasets.ImageFolder(folder)  # PIL images; cat 0, dog 1
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    rows = datasets.Dataset.from_dict(
        {"image": [img for img, _ in pairs], "label": [y for _, y in pairs]}, features=features
    )
    lens = netlens.Lens(model(), {"size": (32, 32)}, classes=["dog", "cat"])

    def loss(data) -> float:  # noqa: ANN001
        return lens.ablate(data, layers="0", mode="zero", metric="loss").table[0]["value"]

    assert loss(rows) == pytest.approx(loss(folder), rel=1e-5)
    assert lens.dataset(rows).label_source == "the Dataset's class names matched to model classes"

    # the usual training-code route: with_transform, and a DataLoader collating dicts (its
    # labels were taken as the model's indices, unmatched)
    def transform(batch: dict) -> dict:
        return {"pixel_values": [lens.preprocess(i)[0] for i in batch["image"]], **batch}

    def collate(items: list) -> dict:
        return {
            "pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "labels": torch.tensor([i["label"] for i in items]),
        }

    loader = torch.utils.data.DataLoader(
        rows.with_transform(transform), batch_size=3, collate_fn=collate
    )
    assert loss(loader) == pytest.approx(loss(folder), rel=1e-5)
