"""A trained model's default data is its held-out images (never the ones it trained on), resume
refuses a changed file list, --max-batches marks a cut test evaluation partial, ``out`` with a
trailing separator is a folder, and DDP weights a batch with an unreadable image as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netlens
from netlens.analyzers.inputs import resolve_data
from netlens.data.resolve import ImageFolderDataset
from netlens.errors import DataError, NetlensError, NetlensWarning
from netlens.images import Preprocess
from netlens.plugins.manager import PluginHost
from netlens.train import trainer
from netlens.train.datasets import EpochShuffle, resolve_splits

pytestmark = [pytest.mark.usefixtures("one_thread")]

FAST = {"epochs": 1, "batch_size": 4, "img_size": 32, "quiet": True, "workers": 0, "threads": 1}


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _folder(root: Path, per: int = 10) -> Path:
    for k, name in enumerate(("cat", "dog")):
        _images(root / name, per, k)
    return root


def _train(data: str, out: Path, **options: object) -> netlens.train.TrainResult:
    return netlens.train("lenet5", data, out=str(out), **{**FAST, **options})


def _holdout_reference(root: Path) -> list[tuple[str, int]]:
    """The seeded 10 % holdout, drawn independently of the recorded list."""
    splits = resolve_splits(str(root), PluginHost(), preprocess=Preprocess(size=(32, 32)))
    base = splits.val.dataset
    return [(os.path.abspath(base.items[i][0]), base.items[i][1]) for i in splits.val.indices]


# -- 1. the default data of a folder-trained model ----------------------------------------------
def test_default_data_is_the_held_out_images_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    _folder(tmp_path / "work" / "pets")
    monkeypatch.chdir(tmp_path / "work")
    result = _train("pets", tmp_path / "m.pt")  # typed relative
    want = _holdout_reference(tmp_path / "work" / "pets")
    assert result.record["data"] == str((tmp_path / "work" / "pets").resolve())
    # elsewhere, a folder of the same name whose classes are swapped
    other = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "work" / "pets", other / "pets")
    (other / "pets" / "cat").rename(other / "pets" / "tmp")
    (other / "pets" / "dog").rename(other / "pets" / "cat")
    (other / "pets" / "tmp").rename(other / "pets" / "dog")
    monkeypatch.chdir(other)
    lens = netlens.load(str(tmp_path / "m.pt"))
    ds = lens.default_data()
    got = [(os.path.abspath(f), int(y)) for f, y in zip(ds.files, ds.labels, strict=True)]
    assert got == want and len(ds) == result.record["val"]["n"] == 2
    data = resolve_data(lens, None, what="test")
    assert len(data.dataset) == 2
    assert "the 2 held-out validation images" in data.source
    assert str((tmp_path / "work" / "pets").resolve()) in data.source
    # the recorded validation accuracy is the held-out images' accuracy
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    acc = float((lens.predict(x).argmax(1) == torch.as_tensor(ds.labels)).float().mean())
    assert acc == pytest.approx(result.record["val"]["accuracy"])


def test_a_moved_data_folder_is_said_with_its_recorded_path(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets")
    _train(str(root), tmp_path / "m.pt")
    root.rename(tmp_path / "moved")
    lens = netlens.load(str(tmp_path / "m.pt"))
    with pytest.raises(DataError, match=f"{root.resolve()} .*not there"):
        lens.default_data()


def test_only_the_training_images_on_the_card_warn_once(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets")
    _train(str(root), tmp_path / "m.pt")
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    del ck["record"]["heldout"]  # as an older checkpoint's
    torch.save(ck, tmp_path / "old.pt")
    lens = netlens.load(str(tmp_path / "old.pt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lens.default_data() == str(root.resolve())
        lens.default_data()
    said = [str(w.message) for w in caught if issubclass(w.category, NetlensWarning)]
    assert len(said) == 1 and "the images it was trained on" in said[0]


@pytest.mark.parametrize("held", ["val", "test"])
def test_a_split_root_gives_its_val_or_test_folder(tmp_path: Path, held: str) -> None:
    root = tmp_path / "d"
    _folder(root / "train", per=6)
    _folder(root / held.capitalize(), per=2)
    result = _train(str(root), tmp_path / "m.pt")
    assert result.record["heldout"]["folder"] == str((root / held.capitalize()).resolve())
    lens = netlens.load(str(tmp_path / "m.pt"))
    assert lens.default_data() == str((root / held.capitalize()).resolve())
    assert len(resolve_data(lens, None, what="test").dataset) == 4


def test_a_named_dataset_stays_a_name(tmp_path: Path) -> None:
    result = netlens.train(
        "lenet5", "mnist5k", out=str(tmp_path / "m.pt"), max_batches=1, **{**FAST, "img_size": None}
    )
    assert result.record["data"] == "mnist5k" and result.record["heldout"] is None
    assert netlens.load(str(tmp_path / "m.pt")).default_data() == "mnist5k"


# -- 2. --resume with another file list ----------------------------------------------------------
def test_resume_refuses_a_changed_file_list(tmp_path: Path, monkeypatch) -> None:
    root = _folder(tmp_path / "pets")
    orig = trainer._train_epoch

    def interrupted(s, epoch, progress):  # noqa: ANN001, ANN202
        if epoch == 2:
            raise KeyboardInterrupt
        return orig(s, epoch, progress)

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(str(root), tmp_path / "m.pt", epochs=2)
    monkeypatch.setattr(trainer, "_train_epoch", orig)
    before = _holdout_reference(root)
    _images(root / "dog", 1, 9)  # an image added: the holdout is drawn anew
    (root / "dog" / "0.png").rename(root / "dog" / "new.png")
    assert _holdout_reference(root) != before
    with pytest.raises(NetlensError, match=r"--resume: the data's files changed.*dog/new\.png"):
        _train(str(root), tmp_path / "m.pt", epochs=2, resume=True)
    (root / "dog" / "new.png").rename(root / "dog" / "0.png")
    assert _holdout_reference(root) == before
    done = _train(str(root), tmp_path / "m.pt", epochs=2, resume=True)  # restored: resumes
    assert [h["epoch"] for h in done.record["history"]] == [1, 2]


# -- 3. --max-batches cuts the test evaluation ---------------------------------------------------
def test_a_test_cut_by_max_batches_is_recorded_partial(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _folder(root / "train", per=6)
    _folder(root / "test", per=6)  # 12 images, scored in batches of 2 × 4
    result = _train(str(root), tmp_path / "m.pt", max_batches=1)
    test = result.record["test"]
    assert test["n"] == 1 * 2 * FAST["batch_size"] and test["images_total"] == 12
    assert test["cut_by_max_batches"] == 1 and result.record["complete"] is False
    full = _train(str(root), tmp_path / "full.pt")
    assert full.record["test"]["n"] == 12 and full.record["complete"] is True


# -- 4. out= with a trailing separator -----------------------------------------------------------
@pytest.mark.parametrize("spelled", ["exp1/", "exp1"])
def test_out_naming_a_folder_writes_its_model_pt(tmp_path: Path, spelled: str) -> None:
    root = _folder(tmp_path / "pets", per=4)
    result = netlens.train("lenet5", str(root), out=str(tmp_path / "runs") + "/" + spelled, **FAST)
    assert result.path == tmp_path / "runs" / "exp1" / "model.pt" and result.path.is_file()


# -- 5. DDP with an unreadable training image -----------------------------------------------------
def test_ddp_weights_a_batch_with_an_unreadable_image_as_one_process(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _folder(root / "train", per=4)
    _folder(root / "val", per=1)
    # the second image of the first global batch: all of the second process's part of it
    order = EpochShuffle(8, 0)
    order.set_epoch(1)
    items = ImageFolderDataset(root / "train", Preprocess()).items
    Path(items[list(order)[1]][0]).write_bytes(b"\x89PNG\r\n\x1a\nxx")
    opts = {"optimizer": "sgd", "schedule": "constant", "lr": 0.05, "weight_decay": 0.0}
    one = _train(str(root), tmp_path / "one.pt", batch_size=2, **opts)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETLENS_THREADS": "1"}
    args = ["--optimizer", "sgd", "--schedule", "constant", "--lr", "0.05", "--weight-decay", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "netlens", "train", "--arch", "lenet5", "--data", str(root)]
        + ["--epochs", "1", "--batch-size", "2", "--img-size", "32", "--workers", "0", "-q"]
        + [
            *args,
            "--skip-bad",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "two"),
            "--distributed",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-500:]
    two = torch.load(tmp_path / "two" / "model.pt", map_location="cpu", weights_only=True)
    a, b = torch.load(one.path, weights_only=True)["state_dict"], two["state_dict"]
    assert max(float((a[k] - b[k]).norm() / a[k].norm()) for k in a) < 1e-4
    assert len(two["record"]["skipped"]) == 1


def test_the_cli_says_which_card_data_it_used(tmp_path: Path) -> None:
    """Given no --data, the command names the held-out images it used on stderr."""
    _folder(tmp_path / "pets")
    _train(str(tmp_path / "pets"), tmp_path / "m.pt")
    done = subprocess.run(
        [sys.executable, "-m", "netlens", "stats", str(tmp_path / "m.pt"), "-o",
         str(tmp_path / "out"), "--threads", "1"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = next(s for s in done.stderr.splitlines() if s.startswith("data: "))
    assert f"{tmp_path / 'pets'}: the 2 held-out validation images (from the model card)" in line
