"""ablate: a resume on other images of a user's own Dataset is refused (the fingerprint cannot
see into ``self.paths``, the images themselves are hashed), and a model built on PyTorch's
``nn.TransformerEncoder`` is studied block by block, each layer skipped as its branches say."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens
from netlens.analyzers.ablation import rows as rows_mod
from netlens.analyzers.ablation.units import find_units
from netlens.errors import NetlensError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # no preprocessing recorded, etc.
]
KW = {"metric": "kl", "resamples": 20, "batch_size": 4}


# -- resume on other images ---------------------------------------------------------------


class PathsDataset(torch.utils.data.Dataset):
    """The usual hand-written dataset: its items under a name the fingerprint does not read."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        a = np.asarray(Image.open(self.paths[i]).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(a).permute(2, 0, 1), self.labels[i]


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)) + x)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        *(Block(8) for _ in range(4)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _images(folder, tag: str, n: int = 8) -> list[str]:
    rng = np.random.default_rng(ord(tag))
    paths = []
    for i in range(n):
        p = folder / f"{tag}{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _interrupted(monkeypatch, model, data, out, rows: int, **kw) -> None:
    """A study stopped (Ctrl-C) after ``rows`` finished rows besides the baseline."""
    orig, n = rows_mod.StudyRows.done, [0]

    def done(self, key, out_):
        n[0] += 1
        if n[0] > rows:
            raise KeyboardInterrupt
        return orig(self, key, out_)

    with monkeypatch.context() as m:
        m.setattr(rows_mod.StudyRows, "done", done)
        with pytest.raises(KeyboardInterrupt):
            netlens.ablate(model, data, out=out, **(kw or KW))


def test_resume_on_other_images_of_a_users_dataset_is_refused(tmp_path, monkeypatch) -> None:
    model, labels = _cnn(), [0, 1, 2, 3, 4, 0, 1, 2]
    a = PathsDataset(_images(tmp_path, "a"), labels)
    b = PathsDataset(_images(tmp_path, "b"), labels)  # other images, the same labels
    out = tmp_path / "study"
    _interrupted(monkeypatch, model, a, out, rows=2)
    kept = (out / ".ablation.rows.csv").read_bytes()
    with pytest.raises(NetlensError, match="made on other images") as err:
        netlens.ablate(model, b, out=out, resume=True, **KW)
    assert "\n" not in str(err.value) and "--resume" in str(err.value)
    assert (out / ".ablation.rows.csv").read_bytes() == kept  # nothing resumed, nothing written
    # the same images go on from the kept rows, as the uninterrupted study
    resumed = netlens.ablate(model, a, out=out, resume=True, **KW)
    assert resumed.meta["resumed"] == 3  # the baseline and two blocks
    assert resumed.table == netlens.ablate(model, a, **KW).table
    assert len(resumed.table[0]["images_sha256"]) == 64  # kept with the intact model's row


class RecordsDataset(torch.utils.data.Dataset):
    """(path, label) pairs under a name the fingerprint does not read."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.records = list(zip(paths, labels, strict=True))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.records[i]
        return PathsDataset([path], [label])[0]


def test_resume_with_relabelled_images_is_refused(tmp_path, monkeypatch) -> None:
    """The labels count too for a metric that reads them, wherever the Dataset keeps them."""
    model, paths = _cnn(), _images(tmp_path, "a")
    out, kw = tmp_path / "study", {**KW, "metric": "accuracy"}
    _interrupted(monkeypatch, model, RecordsDataset(paths, [0] * 8), out, rows=1, **kw)
    with pytest.raises(NetlensError, match="made on other images"):
        netlens.ablate(model, RecordsDataset(paths, [1] * 8), out=out, resume=True, **kw)
    resumed = netlens.ablate(model, RecordsDataset(paths, [0] * 8), out=out, resume=True, **kw)
    assert resumed.meta["resumed"] == 2


# -- nn.TransformerEncoder ----------------------------------------------------------------


class TViT(nn.Module):
    """A ViT on PyTorch's own encoder (its layers' forward does not trace with torch.fx)."""

    def __init__(self, norm_first: bool, final_norm: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 32, 8, 8)
        self.pos = nn.Parameter(torch.randn(1, 16, 32) * 0.1)
        layer = nn.TransformerEncoderLayer(
            32, 2, 64, dropout=0.1, batch_first=True, norm_first=norm_first
        )
        norm = nn.LayerNorm(32) if final_norm else None
        self.enc = nn.TransformerEncoder(layer, 3, norm=norm, enable_nested_tensor=False)
        with torch.no_grad():  # the norms' affine parameters away from 1, 0
            for n, p in self.enc.named_parameters():
                if "norm" in n:
                    p.add_(0.3 * torch.randn_like(p))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.enc(t).mean(1))


def _kl_by_hand(model: nn.Module, x: torch.Tensor, unit: str, skip) -> float:
    """Mean KL(intact ‖ ablated) with ``unit``'s output replaced by ``skip(its input)``."""
    layer = model.get_submodule(unit)
    with torch.no_grad():
        base = model(x).log_softmax(1)
        h = layer.register_forward_hook(lambda m, args, out: skip(args[0]))
        try:
            abl = model(x).log_softmax(1)
        finally:
            h.remove()
    return float((base.exp() * (base - abl)).sum(1).mean())


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_transformer_encoder_layers_are_blocks_skipped_without_their_branches(
    norm_first,
) -> None:
    model = TViT(norm_first).eval()
    torch.manual_seed(1)
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = netlens.ablate(model, (x, y), **KW)
    names = [f"enc.layers.{i}" for i in range(3)]
    assert [r["unit"] for r in res.rows] == names  # not one row for the whole encoder
    assert {r["kind"] for r in res.rows} == {"residual"} and res.meta["warnings"] == []
    for r in res.rows:
        layer = model.get_submodule(r["unit"])
        skip = (lambda t: t) if norm_first else (lambda t, m=layer: m.norm2(m.norm1(t)))
        assert r["value"] == pytest.approx(_kl_by_hand(model, x, r["unit"], skip), rel=1e-5)
        if not norm_first:  # the input passed on is another thing, and measurably so
            through = _kl_by_hand(model, x, r["unit"], lambda t: t)
            assert abs(r["value"] - through) > 1e-3


def test_a_module_holding_one_stack_counts_as_its_blocks() -> None:
    """``nn.TransformerEncoder`` with a final norm, and a user's module whose one child (norms
    aside) is a ModuleList of like blocks that are not residual: their blocks are the units."""

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3)
            )
            self.norm = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for b in self.blocks:
                x = b(x)
            return self.norm(x)

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        Stack(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    units, _ = find_units(net, torch.rand(2, 3, 16, 16))
    assert [u.name for u in units] == ["0", "1.blocks.0", "1.blocks.1", "1.blocks.2"]
    assert {u.kind for u in units} == {"layer"}
    # the encoder with a final LayerNorm: its layers (the norm is never a unit)
    units, _ = find_units(TViT(False, final_norm=True).eval(), torch.rand(2, 3, 32, 32))
    assert [u.name for u in units] == [f"enc.layers.{i}" for i in range(3)]
