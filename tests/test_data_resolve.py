"""``data`` in every form: folder, CSV list, dataset name, Dataset, DataLoader, tensor pair."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from netlens.data import as_dataset, as_loader
from netlens.errors import DataError
from netlens.images import Preprocess

PRE = Preprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))


@pytest.fixture
def folder(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            img = np.full((10, 12, 3), 40 * (k + 1) + i, np.uint8)
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), img)
    return tmp_path


def test_folder_and_csv_agree(folder):
    ds = as_dataset(folder, PRE)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    x, y = ds[4]
    assert y == 1 and torch.allclose(x, torch.full((3, 8, 8), 81 / 255))
    lines = ["path,label"] + [f"{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    (folder / "list.csv").write_text("\n".join(lines))
    csv_ds = as_dataset(folder / "list.csv", PRE)
    assert csv_ds.classes == ds.classes
    assert [csv_ds[i][1] for i in range(6)] == [ds[i][1] for i in range(6)]


def test_pairs_loaders_and_limits():
    x, y = torch.randn(10, 3, 8, 8), torch.arange(10) % 3
    loader = as_loader((x, y), batch_size=4, limit=6)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 2]
    assert torch.equal(batches[0][0], x[:4])
    assert as_loader(loader) is loader


def test_bad_data_one_line(tmp_path):
    with pytest.raises(DataError, match="neither a folder"):
        as_dataset("no-such-dataset")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        as_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="cannot use a int"):
        as_dataset(3)


def test_what_macs_zips_and_notebooks_leave_in_a_folder_is_no_data(folder):
    """``.ipynb_checkpoints`` and ``__MACOSX`` used to be classes (a one-line refusal: "folder
    names the model does not have"), and ``._0.png`` resource forks images that fail to decode."""
    from netlens.images import list_images

    for junk in (".ipynb_checkpoints", "__MACOSX/cat", "cat/.hidden"):
        (folder / junk).mkdir(parents=True)
        cv2.imwrite(str(folder / junk / "9.png"), np.zeros((10, 12, 3), np.uint8))
    (folder / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / "dog" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    ds = as_dataset(folder, PRE, classes=["cat", "dog"])
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    assert [p.name for p, _ in ds.items] == ["0.png", "1.png", "2.png"] * 2
    assert [p.name for p in list_images(folder)] == ["0.png", "1.png", "2.png"] * 2
    assert len(list_images(folder / ".ipynb_checkpoints")) == 1  # asked for by name: read


@pytest.mark.parametrize(
    "text",
    [
        "\ufeffpath,label\r\ncat\\0.png,cat\r\ndog\\2.png,dog\r\n",  # Excel's CSV UTF-8, Windows
        "path;label\ncat/0.png;cat\ndog/2.png;dog\n",  # Excel where 0,5 is a half
        "image_path\tclass\ncat/0.png\tcat\ndog/2.png\tdog\n",  # tab-separated, other header
        'filename,category\n"cat/0.png",cat\n"dog/2.png","dog"\n',
    ],
)
def test_a_csv_list_as_spreadsheets_write_it(folder, text):
    """A BOM turned the header into a row labelled 'label' (refused: a label the model does
    not have); ``;`` and tabs were one column; backslashes were part of a Linux file name."""
    (folder / "list.csv").write_bytes(text.encode())
    ds = as_dataset(folder / "list.csv", PRE, classes=["cat", "dog"])
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["cat/0.png", "dog/2.png"]
    assert ds.labels.tolist() == [0, 1]
    assert ds[1][0].shape == (3, 8, 8)


def test_a_flat_image_folder_stays_flat_beside_a_checkpoints_folder(folder):
    """Label-free ablation takes a flat folder of images; Jupyter's ``.ipynb_checkpoints``
    beside them made it a folder of classes, and then one without any."""
    from torch import nn

    import netlens
    from netlens.analyzers.unlabelled import ImageFiles, unlabelled_data

    flat = folder / "cat"
    (flat / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(flat / ".ipynb_checkpoints" / "0-checkpoint.png"), np.zeros((4, 4, 3)))
    lens = netlens.load(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    data = unlabelled_data(lens, flat)
    assert isinstance(data, ImageFiles) and len(data) == 3


def test_a_dataset_root_with_its_splits_is_not_two_classes(folder):
    """``data/train/cat``, ``data/val/cat``: given ``data``, its splits were two classes (with
    a model that has no class names, silently: 'train' became class 0)."""
    import shutil

    root = folder / "data"
    for split in ("train", "val"):
        shutil.copytree(folder / "cat", root / split / "cat")
        shutil.copytree(folder / "dog", root / split / "dog")
    with pytest.raises(DataError, match=r"holds the splits train, val.*--data .*val\)"):
        as_dataset(root, PRE)
    assert as_dataset(root / "val", PRE).classes == ["cat", "dog"]
    assert len(as_dataset(root, PRE, classes=["train", "val"])) == 12  # the model's own classes
    flat = folder / "flat"  # splits holding images, no class folders: read as classes still
    for split in ("train", "test"):
        shutil.copytree(folder / "cat", flat / split)
    assert as_dataset(flat, PRE).classes == ["test", "train"]


def test_a_kaggle_style_csv_of_ids_finds_its_images(folder):
    """``train.csv`` of ``id,label`` rows beside ``train/<id>.png``: the ids were taken as
    paths beside the CSV, none existed, every image was skipped and evaluate crashed."""
    import shutil

    shutil.copytree(folder / "cat", folder / "train")
    (folder / "train.csv").write_text("id,label\n0,1\n1,0\n2,1\n")
    ds = as_dataset(folder / "train.csv", PRE)
    assert [p.relative_to(folder).as_posix() for p in ds.files] == [
        "train/0.png",
        "train/1.png",
        "train/2.png",
    ]
    (folder / "cat.csv").write_text("cat/0,0\ncat/1,0\n")  # ids beside the CSV, no extension
    assert [p.name for p in as_dataset(folder / "cat.csv", PRE).files] == ["0.png", "1.png"]
    (folder / "gone.csv").write_text("path,label\nnope/0.png,0\nnope/1.png,1\n")
    with pytest.raises(DataError, match=r"gone.csv lists 2 image\(s\), none of them there"):
        as_dataset(folder / "gone.csv", PRE)
    (folder / "some.csv").write_text("path,label\ncat/0.png,0\nnope/1.png,1\n")
    assert len(as_dataset(folder / "some.csv", PRE)) == 2  # the missing one is skipped later


def test_csv_columns_named_by_a_header_and_labels_pandas_wrote_as_floats(folder):
    """``lesion_id,image_id,dx_type,label`` (HAM10000-style metadata): the image and label
    columns are the ones the header names; ``1.0`` is class 1 (pandas writes an integer
    column as floats once it holds a gap). Both were taken as the first two columns, as paths
    'L0' and labels 'cat/0.png' or '1.0' (unknown names)."""
    (folder / "meta.csv").write_text(
        "lesion_id,image_id,dx_type,label\nL0,cat/0.png,histo,1.0\nL1,dog/1.png,histo,0.0\n"
    )
    ds = as_dataset(folder / "meta.csv", PRE)
    assert [p.relative_to(folder).as_posix() for p in ds.files] == ["cat/0.png", "dog/1.png"]
    assert [ds[i][1] for i in range(2)] == [1, 0]
    assert ds.label_source == "CSV integer indices"
    (folder / "two.csv").write_text("cat/0.png,2.5\n")  # not integral: a name
    with pytest.raises(DataError, match="'2.5'"):
        as_dataset(folder / "two.csv", PRE, classes=["a", "b", "c"])


@pytest.mark.parametrize("one", ["1", "1.0"])
def test_a_one_hot_label_table_gives_each_image_its_marked_class(folder, one):
    """ISIC's ``image,MEL,NV,BCC,...`` ground truth and Kaggle's ``image_id,healthy,rust,scab``:
    one 0/1 column per class, headed by its name. It was read as ``path,label``: the first
    class column's 0/1 became every image's class index, without a word."""
    zero = "0.0" if one == "1.0" else "0"
    rows = [("cat/0", "NV"), ("cat/1", "MEL"), ("dog/0", "BCC"), ("dog/1", "NV")]
    cols = ["MEL", "NV", "BCC"]
    lines = ["image," + ",".join(cols)]
    lines += [f"{p}," + ",".join(one if c == y else zero for c in cols) for p, y in rows]
    (folder / "gt.csv").write_text("\n".join(lines) + "\n")
    # the model's classes in another order: matched by name
    ds = as_dataset(folder / "gt.csv", PRE, classes=["BCC", "MEL", "NV"])
    assert [int(ds.labels[i]) for i in range(4)] == [2, 1, 0, 2]
    assert ds.label_source == "CSV one-hot columns matched to model classes"
    # no class names: the columns' order, as a model trained on the one-hot vectors numbers them
    ds = as_dataset(folder / "gt.csv", PRE, classes=None)
    assert [int(ds.labels[i]) for i in range(4)] == [1, 0, 2, 1]
    assert ds.classes == cols and "in their order" in ds.label_source
    with pytest.raises(DataError, match="3 class columns .*, the model 5 outputs"):
        as_dataset(folder / "gt.csv", PRE, classes=None, num_classes=5)


def test_a_row_marking_several_classes_is_refused_in_one_line(folder):
    (folder / "multi.csv").write_text("image,rust,scab\ncat/0.png,1,0\ncat/1.png,1,1\n")
    with pytest.raises(DataError, match=r"marks 2 of its class columns \(rust, scab\) in row 3"):
        as_dataset(folder / "multi.csv", PRE, classes=["rust", "scab"])


def test_a_label_column_beside_0_1_columns_is_the_label(folder):
    """``path,label,fold,flipped``: the named label column wins over 0/1 bookkeeping columns."""
    (folder / "folds.csv").write_text(
        "path,label,fold,flipped\ncat/0.png,dog,0,1\ncat/1.png,cat,1,0\n"
    )
    ds = as_dataset(folder / "folds.csv", PRE, classes=["cat", "dog"])
    assert [int(ds.labels[i]) for i in range(2)] == [1, 0]
