"""netlens train: freezing root-level parameters, numeric CSV labels that are class names, a batch
left with one readable image, unknown options, --init from a bare state_dict, NFD class names, a
single class, Kaggle's unlabelled test/, and --resume checks (paths, classes)."""

from __future__ import annotations

import shutil
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens
from netlens.data.csvlist import CsvListDataset
from netlens.data.labels import normalize_name
from netlens.data.resolve import ImageFolderDataset
from netlens.errors import DataError, NetlensError
from netlens.images import Preprocess
from netlens.train import trainer
from netlens.train.transfer import count_params, freeze

torch.set_num_threads(1)

FAST = {"epochs": 1, "batch_size": 4, "img_size": 32, "quiet": True, "workers": 0, "threads": 1}

TINY_BN = """
import torch
from torch import nn


class TinyBN(nn.Module):
    def __init__(self, num_classes=2, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.pool(self.conv(x)).flatten(1)))
"""


def _images(folder: Path, n: int, seed: int, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{prefix}{i}.png")


def _data(root: Path, classes: tuple[str, ...] = ("a", "b"), per: int = 4, val: int = 2) -> Path:
    for k, name in enumerate(classes):
        _images(root / "train" / name, per, k)
        if val:
            _images(root / "val" / name, val, 100 + k)
    return root


class _Tokens(nn.Module):
    """A ViT's layout: parameters the root owns (cls_token, pos_embed) besides its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, 4))
        self.patch = nn.Linear(4, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), self.patch(x)[:, None]], 1)
        return self.head(self.block(t + self.pos_embed)[:, 0])


# -- 1. --freeze and the root module's own parameters ----------------------------------------
def test_freeze_backbone_freezes_the_root_modules_own_parameters() -> None:
    m = _Tokens()
    freeze(m, "backbone")
    assert not m.cls_token.requires_grad and not m.pos_embed.requires_grad
    assert count_params(m)[1] == sum(p.numel() for p in m.head.parameters())
    past = _Tokens()
    freeze(past, "up-to:block")  # past the first layer: the tokens run before it
    assert not past.cls_token.requires_grad and not past.pos_embed.requires_grad
    first = _Tokens()
    freeze(first, "up-to:patch")  # the first layer only: the tokens are added after it
    assert first.cls_token.requires_grad and first.pos_embed.requires_grad


# -- 2. a CSV of numbers that are the model's class names ------------------------------------
def test_csv_numbers_that_are_model_class_names_are_matched_by_name(tmp_path: Path) -> None:
    _images(tmp_path, 3, 0)
    (tmp_path / "list.csv").write_text("path,label\nimg0.png,0\nimg1.png,2\nimg2.png,10\n")
    text_order = sorted(str(i) for i in range(12))  # 0, 1, 10, 11, 2, ...: ImageFolder's
    with pytest.warns(UserWarning, match="matched by name"):
        ds = CsvListDataset(tmp_path / "list.csv", classes=text_order)
    assert ds.labels.tolist() == [0, 4, 2]
    assert "numbers read as names" in ds.label_source
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # names at their own positions: indices, silently
        same = CsvListDataset(tmp_path / "list.csv", classes=[str(i) for i in range(12)])
    assert same.labels.tolist() == [0, 2, 10] and same.label_source == "CSV integer indices"


# -- 3. a batch left with one readable image -------------------------------------------------
def test_a_batch_of_one_readable_image_is_left_out_not_a_batchnorm_crash(tmp_path: Path) -> None:
    root = _data(tmp_path / "d", per=3, val=1)
    for i in range(4):
        (root / "train" / "a" / f"broken{i}.png").write_bytes(b"not an image")
    (tmp_path / "tiny.py").write_text(TINY_BN)
    opts = {**FAST, "batch_size": 2, "epochs": 2, "out": str(tmp_path / "m.pt")}
    result = netlens.train(f"{tmp_path / 'tiny.py'}:TinyBN", str(root), **opts)
    assert len(result.skipped) == 4
    assert result.record["single_image_steps"] >= 1


# -- 4. unknown options ----------------------------------------------------------------------
def test_unknown_training_options_are_refused_with_the_closest_names(tmp_path: Path) -> None:
    with pytest.raises(NetlensError, match="'epoch' \\(did you mean 'epochs'") as err:
        netlens.train("lenet5", str(tmp_path), epoch=1, optimiser="sgd")
    assert "'optimiser' (did you mean 'optimizer'" in str(err.value)
    assert "\n" not in str(err.value)


# -- 5. --init from a file of weights alone --------------------------------------------------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_init_from_a_bare_state_dict_builds_the_runs_arch(tmp_path: Path, suffix: str) -> None:
    root = _data(tmp_path / "d")
    first = netlens.train("lenet5", str(root), out=str(tmp_path / "a.pt"), **FAST)
    weights = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in first.model.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, weights)
    else:
        from safetensors.torch import save_file

        save_file(state, str(weights))
    again = netlens.train(
        "lenet5",
        str(root),
        out=str(tmp_path / "b.pt"),
        init=str(weights),
        freeze="backbone",
        **FAST,
    )
    mine, theirs = again.model.state_dict(), first.model.state_dict()
    assert again.record["frozen"] and all(
        torch.equal(mine[k], theirs[k]) for k in mine if "conv" in k
    )


# -- 6. class names in another Unicode normal form -------------------------------------------
def test_nfd_class_folders_match_their_nfc_names(tmp_path: Path) -> None:
    root = _data(tmp_path / "d", classes=("cat", "été"))
    nfd = unicodedata.normalize("NFD", "été")
    (root / "val" / "été").rename(root / "val" / nfd)
    result = netlens.train("lenet5", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert result.record["val"]["n"] == 4
    val = ImageFolderDataset(root / "val", Preprocess(size=(32, 32)), classes=["cat", "été"])
    assert sorted({y for _, y in val.items}) == [0, 1]
    assert normalize_name(nfd) == normalize_name("été")


# -- 7. a single class -----------------------------------------------------------------------
def test_a_single_class_is_refused_in_one_line(tmp_path: Path) -> None:
    root = _data(tmp_path / "d", classes=("only",))
    with pytest.raises(DataError, match="training needs 2 classes or more") as err:
        netlens.train("lenet5", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert "\n" not in str(err.value)
    nested = tmp_path / "pets"
    _data(nested / "images", val=0)  # pets/images/train/{a,b}: one folder too high
    shutil.move(str(nested / "images" / "train"), str(nested / "x"))
    shutil.rmtree(nested / "images")
    (nested / "x").rename(nested / "images")  # pets/images/{a,b}
    with pytest.raises(DataError, match="one level down: -d .*images"):
        netlens.train("lenet5", str(nested), out=str(tmp_path / "m.pt"), **FAST)


# -- 8. Kaggle's unlabelled test/ ------------------------------------------------------------
def test_an_unlabelled_test_folder_is_left_out_with_a_note(tmp_path: Path) -> None:
    root = _data(tmp_path / "d", val=0)
    _images(root / "test", 3, 9)  # flat: no class folders
    result = netlens.train("lenet5", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert result.test is None and result.record["complete"]


# -- 9. --resume ------------------------------------------------------------------------------
def _interrupted(root: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orig = trainer._train_epoch

    def boom(s, epoch, progress):  # noqa: ANN001, ANN202
        if epoch == 2:
            raise KeyboardInterrupt
        return orig(s, epoch, progress)

    with monkeypatch.context() as m:
        m.setattr(trainer, "_train_epoch", boom)
        with pytest.raises(KeyboardInterrupt):
            netlens.train("lenet5", str(root), out=str(out), **{**FAST, "epochs": 2})


def test_resume_takes_the_same_folder_however_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _data(tmp_path / "d")
    out = tmp_path / "m.pt"
    _interrupted(root, out, monkeypatch)
    monkeypatch.chdir(tmp_path)
    result = netlens.train("lenet5", "d/", out=str(out), resume=True, **{**FAST, "epochs": 2})
    assert len(result.record["history"]) == 2


def test_resume_after_a_class_was_added_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _data(tmp_path / "d")
    out = tmp_path / "m.pt"
    _interrupted(root, out, monkeypatch)
    _images(root / "train" / "c", 4, 7)
    with pytest.raises(NetlensError, match=r"had 2 classes \(a, b\), the data now has 3") as err:
        netlens.train("lenet5", str(root), out=str(out), resume=True, **{**FAST, "epochs": 2})
    assert "\n" not in str(err.value) and "size mismatch" not in str(err.value)
