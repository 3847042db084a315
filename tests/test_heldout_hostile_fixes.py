"""Hostile or unusual inputs around held-out data: a split root whose ``test/`` is unlabelled
(Kaggle's layout), a damaged or hostile resume state, a damaged ``record["heldout"]`` on a model
card, held-out class names the model lacks and held-out files outside the recorded data folder."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netlens
from netlens.data.resolve import as_dataset
from netlens.errors import DataError, NetlensError, NetlensWarning

pytestmark = [pytest.mark.usefixtures("one_thread")]

FAST = {"epochs": 1, "batch_size": 4, "img_size": 32, "quiet": True, "workers": 0, "threads": 1}


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _kaggle(root: Path, val: bool = True) -> Path:
    for k, c in enumerate(("cat", "dog")):
        _images(root / "train" / c, 3, k)
        if val:
            _images(root / "val" / c, 2, 10 + k)
    _images(root / "test", 3, 20)  # unlabelled: no class folders
    return root


# -- 1. a split root with an unlabelled test/ ---------------------------------------------------
@pytest.mark.parametrize("classes", [["cat", "dog"], None], ids=["labelled", "no-model-classes"])
def test_split_root_with_unlabelled_test_reads_its_val_split(tmp_path: Path, classes) -> None:
    root = _kaggle(tmp_path / "kaggle")
    want = sorted(str(p) for p in (root / "val").rglob("*.png"))  # the labelled held-out split
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = as_dataset(root, split="test", **({"classes": classes} if classes else {}))
    assert sorted(str(f) for f, _ in ds.items) == want and len(ds) == 4
    assert [ds.classes[k] for _, k in ds.items] == [Path(f).parent.name for f, _ in ds.items]
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, NetlensWarning))
    assert "reading its val split" in said and "test/" in said and "unlabelled" in said


def test_split_root_with_only_train_and_unlabelled_test_is_refused(tmp_path: Path) -> None:
    root = _kaggle(tmp_path / "kaggle", val=False)
    for classes in (["cat", "dog"], None):
        with pytest.raises(DataError) as err:
            as_dataset(root, split="test", **({"classes": classes} if classes else {}))
        msg = str(err.value)
        assert "not classes" in msg and "test (unlabelled)" in msg
        assert f"--data {root / 'test'}" in msg and "no labels are read" in msg
        assert "\n" not in msg


def test_split_root_cli_stats_reads_val_only(tmp_path: Path) -> None:
    root = _kaggle(tmp_path / "kaggle")
    netlens.train("lenet5", str(root), out=str(tmp_path / "m.pt"), **FAST)
    lens = netlens.load(str(tmp_path / "m.pt"))
    from netlens.analyzers.unlabelled import unlabelled_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = unlabelled_data(lens, str(root))
    assert sorted(str(f) for f, _ in ds.items) == sorted(
        str(p) for p in (root / "val").rglob("*.png")
    )


# -- 2. a damaged or hostile resume state -------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def _damage_truncated(path: Path) -> None:
    torch.save({"x": torch.zeros(1000)}, path)
    with open(path, "r+b") as fh:
        fh.truncate(300)


@pytest.mark.parametrize(
    "kind", ["pickle", "truncated", "list", "missing-keys", "bad-rng", "text-epoch", "empty"]
)
def test_resume_refuses_damaged_state_in_one_line(tmp_path: Path, monkeypatch, kind: str) -> None:
    data = tmp_path / "data"
    for k, c in enumerate(("a", "b")):
        _images(data / c, 5, k)
    out = tmp_path / "m.pt"
    last = tmp_path / "m.last.pt"
    marker = tmp_path / "PWNED"
    if kind in ("bad-rng", "text-epoch"):
        _keep_state(monkeypatch, tmp_path)
        netlens.train("lenet5", str(data), out=str(out), **FAST)
        monkeypatch.undo()
        state = torch.load(last, weights_only=True)
        if kind == "bad-rng":
            state["rng"]["torch"] = [1, 2, 3]
        else:
            state["epoch"] = "one"
        torch.save(state, last)
    elif kind == "pickle":
        torch.save(_Evil(marker), last)
    elif kind == "truncated":
        _damage_truncated(last)
    elif kind == "list":
        torch.save([1, 2, 3], last)
    elif kind == "missing-keys":
        torch.save({"config": {}, "model": {}}, last)
    else:
        last.write_bytes(b"")
    with pytest.raises(NetlensError) as err:
        netlens.train("lenet5", str(data), out=str(out), resume=True, **FAST)
    msg = str(err.value)
    assert "is damaged or not a netlens resume state" in msg
    assert "delete it and train without --resume" in msg
    assert "weights_only" not in msg and "\n" not in msg
    assert not marker.exists()


def _keep_state(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    """Keep ``<out>.last.pt`` after a complete run (as an interrupted run leaves it)."""
    from netlens.train import trainer

    monkeypatch.setattr(trainer, "last_path", lambda out: tmp_path / "not-removed")


def test_resume_of_a_good_state_still_continues(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    for k, c in enumerate(("a", "b")):
        _images(data / c, 5, k)
    out = tmp_path / "m.pt"
    _keep_state(monkeypatch, tmp_path)
    netlens.train("lenet5", str(data), out=str(out), **FAST)
    monkeypatch.undo()
    assert (tmp_path / "m.last.pt").is_file()
    result = netlens.train("lenet5", str(data), out=str(out), resume=True, **FAST)
    assert result.path.is_file()
    assert not (tmp_path / "m.last.pt").exists()


# -- 3./4. a damaged or edited record["heldout"] ------------------------------------------------
@pytest.fixture(scope="module")
def pets_model(tmp_path_factory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("pets")
    for k, c in enumerate(("cat", "dog", "emu")):
        _images(base / "pets" / c, 10, k)
    netlens.train("lenet5", str(base / "pets"), out=str(base / "m.pt"), **FAST)
    return base, base / "m.pt"


def _edited(model: Path, dst: Path, fn) -> str:  # noqa: ANN001
    ck = torch.load(model, weights_only=True)
    fn(ck["record"])
    torch.save(ck, dst)
    return str(dst)


def _files(entries):  # noqa: ANN001, ANN202
    return lambda r: r["heldout"].__setitem__("files", entries)


DAMAGED = {
    "no-root": lambda r: r["heldout"].pop("root"),
    "root-int": lambda r: r["heldout"].__setitem__("root", 5),
    "pair": _files([["cat/2.png", 0]]),
    "one": _files([["cat/2.png"]]),
    "index-text": _files([["cat/2.png", "x", "cat"]]),
    "index-negative": _files([["cat/2.png", -1, "cat"]]),
    "files-str": _files("cat/2.png"),
    "heldout-list": lambda r: r.__setitem__("heldout", [1, 2]),
    "folder-int": lambda r: r.__setitem__("heldout", {"split": "test", "folder": 3}),
    "escape": _files([["../outside.png", 0, "cat"], ["cat/2.png", 0, "cat"]]),
    "absolute": _files([["/etc/passwd", 0, "cat"], ["cat/2.png", 0, "cat"]]),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_heldout_record_is_one_data_error(pets_model, tmp_path: Path, case: str) -> None:
    base, model = pets_model
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(base / "outside.png")
    lens = netlens.load(_edited(model, tmp_path / "c.pt", DAMAGED[case]))
    with pytest.raises(DataError) as err:
        lens.default_data()
    msg = str(err.value)
    assert "the model card's held-out record is damaged" in msg and "--data" in msg
    assert "\n" not in msg


def test_heldout_name_the_model_lacks_is_refused(pets_model, tmp_path: Path) -> None:
    _, model = pets_model
    edit = _files([["cat/2.png", 1, "zebra"], ["dog/1.png", 1, "dog"]])
    lens = netlens.load(_edited(model, tmp_path / "c.pt", edit))
    with pytest.raises(DataError, match="class names the model does not have: 'zebra'"):
        lens.default_data()


def test_heldout_names_matched_as_netlens_matches_class_names(pets_model, tmp_path: Path) -> None:
    base, model = pets_model
    entries = [["cat/2.png", 1, "CAT"], ["emu/3.png", 0, "Emu"], ["dog/1.png", 2, "dog"]]
    lens = netlens.load(_edited(model, tmp_path / "c.pt", _files(entries)))
    ds = lens.default_data()
    # reference: the class folder each file lies in, looked up in the model's classes
    want = [lens.classes.index(Path(rel).parent.name) for rel, _, _ in entries]
    assert [int(y) for y in ds.labels] == want == [0, 2, 1]
    assert [Path(f) for f in ds.files] == [base / "pets" / rel for rel, _, _ in entries]


def test_heldout_of_a_model_without_class_names_uses_the_recorded_index(
    pets_model, tmp_path: Path
) -> None:
    _, model = pets_model

    def edit(record: dict) -> None:
        record["heldout"]["files"] = [["cat/2.png", 0, "cat"], ["emu/3.png", 2, "emu"]]

    ck = torch.load(model, weights_only=True)
    edit(ck["record"])
    torch.save(ck, tmp_path / "c.pt")
    lens = netlens.load(str(tmp_path / "c.pt"))
    lens.classes = None
    ds = lens.default_data()
    assert [int(y) for y in ds.labels] == [0, 2]
    assert ds.classes[0] == "cat" and ds.classes[2] == "emu"


def test_heldout_through_a_symlinked_data_folder_still_reads(tmp_path: Path) -> None:
    for k, c in enumerate(("cat", "dog")):
        _images(tmp_path / "real" / "pets" / c, 10, k)
    try:
        os.symlink(tmp_path / "real", tmp_path / "link")
    except OSError:
        pytest.skip("no symlinks here")
    netlens.train("lenet5", str(tmp_path / "link" / "pets"), out=str(tmp_path / "m.pt"), **FAST)
    ds = netlens.load(str(tmp_path / "m.pt")).default_data()
    assert len(ds) == 2 and all(Path(f).exists() for f in ds.files)


def test_heldout_of_a_csv_list_may_lie_beside_it(tmp_path: Path) -> None:
    for k, c in enumerate(("cat", "dog")):
        _images(tmp_path / "pets" / c, 10, k)
    (tmp_path / "lists").mkdir()
    rows = [f"../pets/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(10)]
    (tmp_path / "lists" / "all.csv").write_text("\n".join(rows) + "\n")
    netlens.train("lenet5", str(tmp_path / "lists" / "all.csv"), out=str(tmp_path / "m.pt"), **FAST)
    ds = netlens.load(str(tmp_path / "m.pt")).default_data()
    assert len(ds) == 2
    assert all(Path(f).resolve().parent.parent == (tmp_path / "pets").resolve() for f in ds.files)
