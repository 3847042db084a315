"""Data laid out or labelled as other tools leave it: (N, 1) and one-hot label tensors, uint8
image tensors in a pair, zero-padded numbered folders (GTSRB), empty class folders and
symlinked subfolders (torchvision's ``ImageFolder`` reads all of them)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.data import as_dataset
from netlens.errors import DataError, NetlensWarning
from netlens.images import list_images
from netlens.preprocess import Preprocess

PRE = Preprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))


def model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes)
    ).eval()


def write(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((12, 12, 3), 40 * i + 20, np.uint8))


def labels_of(ds) -> dict[str, int]:
    return {p.parent.name: y for p, y in ds.items}


# -- (images, labels) pairs --------------------------------------------------------------------
def test_pair_labels_shaped_n_by_1_or_one_hot_are_class_indices() -> None:
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([2, 2, 0, 1])
    for given in (y[:, None], nn.functional.one_hot(y, 3), nn.functional.one_hot(y, 3).float()):
        ds = as_dataset((x, given), PRE, classes=None, num_classes=3)
        assert [ds[i][1] for i in range(4)] == [2, 2, 0, 1]
    lens = netlens.Lens(model(), {"size": (8, 8)})
    assert lens.ablate((x, y[:, None]), layers="0", mode="zero").baseline["n"] == 4


def test_pair_labels_that_are_not_one_class_per_image_are_one_line() -> None:
    x = torch.rand(3, 3, 8, 8)
    multi = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    for bad in (multi, soft, torch.zeros(3, 2, 2, dtype=torch.long)):
        with pytest.raises(DataError) as err:
            as_dataset((x, bad), PRE, classes=None, num_classes=3)
        msg = str(err.value)
        assert "\n" not in msg and "class index" in msg, msg
    with pytest.raises(DataError, match="3 images but 2 labels; give one label per image"):
        as_dataset((x, torch.tensor([0, 1])), PRE, classes=None)


def test_uint8_images_in_a_pair_are_preprocessed_float_ones_used_as_they_are() -> None:
    rng = np.random.default_rng(0)
    hwc = torch.from_numpy(rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    y = torch.tensor([0, 1])
    for x in (hwc, hwc.permute(0, 3, 1, 2)):
        ds = as_dataset((x, y), PRE, classes=None, num_classes=3)
        img, label = ds[1]
        assert img.dtype == torch.float32 and img.shape == (3, 8, 8) and label == 1
        assert torch.allclose(img, PRE(hwc[1].numpy()))
    floats = torch.rand(2, 3, 5, 5)
    assert torch.equal(as_dataset((floats, y), PRE, classes=None)[0][0], floats[0])
    lens = netlens.Lens(model(), {"size": (8, 8)})
    assert lens.ablate((hwc.permute(0, 3, 1, 2), y), layers="0", mode="zero").baseline["n"] == 2


# -- folders -----------------------------------------------------------------------------------
def test_zero_padded_numbered_folders_are_their_numbers(tmp_path: Path) -> None:
    for name in ("00000", "00002", "00003"):
        write(tmp_path / "gtsrb" / name, "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlensWarning)
        ds = as_dataset(tmp_path / "gtsrb", PRE, classes=None, num_classes=5)
    assert labels_of(ds) == {"00000": 0, "00002": 2, "00003": 3}
    for name in ("00", "01"):
        write(tmp_path / "named" / name, "a.png")
    ds = as_dataset(tmp_path / "named", PRE, classes=["cat", "dog"])
    assert labels_of(ds) == {"00": 0, "01": 1}


def test_an_empty_class_folder_keeps_its_number(tmp_path: Path) -> None:
    """torchvision's ImageFolder numbers ant 0, bird 1, cat 2 (ant empty): so did the model."""
    (tmp_path / "ant").mkdir()
    write(tmp_path / "bird", "b.png")
    write(tmp_path / "cat", "c.png")
    with pytest.warns(NetlensWarning, match=r"sorted folder names \(ant, bird, cat\)"):
        ds = as_dataset(tmp_path, PRE, classes=None)
    assert labels_of(ds) == {"bird": 1, "cat": 2} and ds.classes == ["ant", "bird", "cat"]
    assert labels_of(as_dataset(tmp_path, PRE)) == {"bird": 1, "cat": 2}
    # matched by name, an empty folder the model has no class for is simply no images
    (tmp_path / "zebra").mkdir()
    named = as_dataset(tmp_path, PRE, classes=["cat", "bird"])
    assert labels_of(named) == {"bird": 1, "cat": 0}


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_subfolders_are_followed_once(tmp_path: Path) -> None:
    data, extra = tmp_path / "data", tmp_path / "extra"
    write(data / "cat", "c.png")
    write(data / "dog", "d.png")
    write(extra / "batch2", "e.png")
    (data / "dog" / "batch2").symlink_to(extra / "batch2", target_is_directory=True)
    (data / "dog" / "loop").symlink_to(data / "dog", target_is_directory=True)  # an ancestor
    (extra / "batch2" / "up").symlink_to(extra, target_is_directory=True)
    found = [p.relative_to(data).as_posix() for p in list_images(data / "dog")]
    assert found == ["dog/batch2/e.png", "dog/d.png"]
    ds = as_dataset(data, PRE)
    assert sorted(p.relative_to(data).as_posix() for p, _ in ds.items) == [
        "cat/c.png",
        "dog/batch2/e.png",
        "dog/d.png",
    ]
