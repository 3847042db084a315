"""Split roots read for their held-out split, val/test class folders matched as class names
are everywhere, and 1-channel datasets for 3-channel-only architectures (sweep 11: findings 2,
7 and 12)."""

from __future__ import annotations

import types
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens
from netlens.data import as_dataset
from netlens.data.resolve import ArrayDataset
from netlens.errors import DataError, NetlensError, NetlensWarning
from netlens.images import Preprocess
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost
from netlens.train.datasets import resolve_splits

pytestmark = [pytest.mark.usefixtures("one_thread")]

PRE = Preprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))


def _images(folder: Path, n: int, value: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((10, 10, 3), value + i, np.uint8)).save(folder / f"{i}.png")


def _root(tmp_path: Path, held_out: dict[str, int]) -> Path:
    """``root/train/{a,b}`` (3 images each) and the held-out split folders given (name: images
    per class)."""
    root = tmp_path / "data"
    for k, cls in enumerate("ab"):
        _images(root / "train" / cls, 3, 50 * k)
        for name, n in held_out.items():
            _images(root / name / cls, n, 50 * k + 10)
    return root


# -- finding 2: a split root ------------------------------------------------------------------
def test_a_split_root_asked_for_its_test_split_reads_val_or_test_not_train(tmp_path) -> None:
    """``train/`` + ``Val/``: 'Val' < 'train' byte-wise, and the old hint named train/; a
    split asked for (analyses ask for test) was ignored for a folder and the root refused."""
    root = _root(tmp_path, {"Val": 2})
    with pytest.warns(NetlensWarning, match=r"reading its val split Val/"):
        ds = as_dataset(root, PRE, split="test", classes=["a", "b"])
    assert ds.root == root / "Val"
    assert len(ds) == 4 and sorted(ds[i][1] for i in range(4)) == [0, 0, 1, 1]
    _images(root / "TEST" / "a", 1, 7)  # a test split beside it: read for test, val for val
    with pytest.warns(NetlensWarning):
        assert as_dataset(root, PRE, split="test", classes=["a", "b"]).root == root / "TEST"
    with pytest.warns(NetlensWarning):
        assert as_dataset(root, PRE, split="val", classes=["a", "b"]).root == root / "Val"


def test_lens_dataset_of_a_split_root_reads_its_held_out_split(tmp_path) -> None:
    root = _root(tmp_path, {"Val": 2})
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    lens = netlens.load(model, classes=["a", "b"], input_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.warns(NetlensWarning, match="Val/"):
        ds = lens.dataset(root)
    assert ds.root == root / "Val" and len(ds) == 4


def test_a_split_root_refused_names_the_held_out_split_never_train(tmp_path) -> None:
    root = _root(tmp_path, {"Val": 2})
    with pytest.raises(DataError, match="holds the splits") as info:
        as_dataset(root, PRE)  # no split asked for
    assert f"--data {root / 'Val'})" in str(info.value)
    assert str(root / "train") not in str(info.value)
    only_train = _root(tmp_path / "t", {})
    (only_train / "val").mkdir()
    (only_train / "val" / "empty").mkdir()  # a val/ without images is no split to read
    with pytest.raises(DataError, match="held-out images") as info:
        as_dataset(only_train, PRE, split="test")
    assert f"--data {only_train / 'train'}" not in str(info.value)


# -- finding 12: val/test class folders matched as class names --------------------------------
def test_val_class_folders_match_train_ignoring_case_and_separators(tmp_path) -> None:
    root = tmp_path / "data"
    names = ["camera man", "coffee cup", "fusée"]
    for k, cls in enumerate(names):
        _images(root / "train" / cls, 3, 40 * k)
    val = {"Camera_Man": 0, "coffee-cup": 1, unicodedata.normalize("NFD", "Fusée"): 2}
    for k, cls in enumerate(val):
        _images(root / "val" / cls, k + 1, 40 * k)
    splits = resolve_splits(root, PluginHost(), preprocess=PRE)
    assert splits.classes == sorted(names)  # torchvision ImageFolder's order
    got = sorted(splits.val[i][1] for i in range(len(splits.val)))
    want = sorted(k for cls, k in val.items() for _ in range(list(val).index(cls) + 1))
    assert got == want


def test_val_class_folders_that_are_ambiguous_are_refused(tmp_path) -> None:
    root = tmp_path / "data"
    for cls in ("camera man", "camera_man", "cup"):
        _images(root / "train" / cls, 2, 0)
    _images(root / "val" / "Camera-Man", 1, 0)
    with pytest.raises(DataError, match=r"could be .*'camera man' or 'camera_man'"):
        resolve_splits(root, PluginHost(), preprocess=PRE)
    root2 = tmp_path / "data2"
    for cls in ("camera man", "cup"):
        _images(root2 / "train" / cls, 2, 0)
    _images(root2 / "val" / "camera man", 1, 0)
    _images(root2 / "val" / "Camera_Man", 1, 0)
    with pytest.raises(DataError, match=r"both train/'s class 'camera man'; merge them"):
        resolve_splits(root2, PluginHost(), preprocess=PRE)


# -- finding 7: 1-channel data, --img-size, 3-channel-only architectures ----------------------
def _gray_host() -> PluginHost:
    """A ``gray-tiny`` dataset: 1-channel 16×16 images in 2 classes (as Fashion-MNIST's)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 24, 16, 16), dtype=np.uint8)
    labels = np.arange(24) % 2

    def factory(split: str = "test", **kw: object) -> ArrayDataset:
        part = {"train": 0, "val": 1, "test": 2}[split]
        return ArrayDataset(images[part], labels, ["even", "odd"])

    plugin = types.ModuleType("gray_plugin")

    @hookimpl
    def netlens_register_datasets(registry) -> None:  # noqa: ANN001
        registry.add("gray-tiny", factory)

    plugin.netlens_register_datasets = netlens_register_datasets  # type: ignore[attr-defined]
    return PluginHost([plugin])


def test_img_size_changes_only_the_size_of_a_named_dataset() -> None:
    """``--img-size 24`` replaced the whole preprocessing: 1 channel with mean/std 0.5 became
    3 channels with ImageNet's."""
    splits = resolve_splits("gray-tiny", _gray_host(), preprocess=Preprocess(size=(24, 24)))
    pre = splits.preprocess
    assert (pre.size, pre.channels, pre.mean, pre.std) == ((24, 24), 1, (0.5,), (0.5,))
    assert splits.train[0][0].shape == (1, 24, 24)


def test_a_3_channel_only_arch_trains_on_gray_images_as_3_channels(tmp_path) -> None:
    """tv:resnet18 on 1-channel data was refused ('cannot run on 1×16×16 images'); the
    recorded preprocessing must be what training used."""
    from netlens.train.config import TrainConfig
    from netlens.train.trainer import setup

    host = _gray_host()
    opts = {"epochs": 1, "batch_size": 8, "max_batches": 1, "threads": 1, "seed": 0}
    out = tmp_path / "m.pt"
    netlens.train("tv:resnet18", "gray-tiny", host=host, quiet=True, out=str(out), **opts)
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["preprocess"]["channels"] == 3 and ck["preprocess"]["mean"] == [0.5] * 3
    lens = netlens.load(str(out))
    cfg = TrainConfig.from_dict({"arch": "tv:resnet18", "data": "gray-tiny", **opts})
    s = setup(cfg, host)
    x, _, _ = next(iter(s.val_loader))  # the rows validation fed the model, in order
    gray = s.splits.val.images[:2]  # 2×16×16×1 uint8
    ref = torch.from_numpy(gray).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    ref = ref.repeat(1, 3, 1, 1)  # the gray replicated to 3 channels, normalised alike
    assert torch.equal(x[:2], ref)
    assert torch.equal(lens.preprocess(list(gray)).cpu(), ref)


def test_in_chans_for_a_torchvision_arch_says_to_leave_it_out(tmp_path) -> None:
    with pytest.raises(NetlensError, match=r"takes no in_chans option: leave --arch-opt"):
        netlens.train(
            "tv:resnet18",
            "gray-tiny",
            host=_gray_host(),
            quiet=True,
            epochs=1,
            max_batches=1,
            threads=1,
            arch_kwargs={"in_chans": 1},
            out=str(tmp_path / "x.pt"),
        )
