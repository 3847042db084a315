"""Images without labels, as a Dataset of bare tensors and as a DataLoader over one (its
batches N×C×H×W tensors, not (images, labels) pairs): label-free analyses give the same
numbers either way; analyses that need labels say so in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


class Bare(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _lens() -> netlens.Lens:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    return netlens.load(net.eval(), input_size=32)


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Bare(), batch_size=2)


def test_a_loader_of_bare_images_gives_the_datasets_numbers() -> None:
    lens = _lens()
    a, b = lens.run("stats", Bare()), lens.run("stats", _loader())
    assert a.table and len(a.table) == len(b.table)
    for ra, rb in zip(a.table, b.table, strict=True):  # batches of 32 and 2: float rounding
        for k in ("values", "mean", "std", "min", "max", "dead_channels", "channels"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5)
    kw = {"metric": "kl", "mode": "zero", "resamples": 10, "progress": False}
    ra, rb = lens.ablate(Bare(), **kw), lens.ablate(_loader(), **kw)
    assert [r["value"] for r in ra.rows] == pytest.approx([r["value"] for r in rb.rows])
    ev = {"metrics": ["deletion"], "target": "pred", "layer": "0", "progress": False}
    ea, eb = lens.evaluate(Bare(), **ev), lens.evaluate(_loader(), **ev)
    assert [r["mean"] for r in ea.table] == pytest.approx([r["mean"] for r in eb.table])


@pytest.mark.parametrize("data", [Bare, _loader], ids=["dataset", "loader"])
def test_analyses_that_need_labels_say_the_data_has_none(data) -> None:
    lens = _lens()
    with pytest.raises(NetlensError, match=r"images without labels; use --target pred"):
        lens.evaluate(data(), metrics=["deletion"], layer="0", progress=False)
    with pytest.raises(NetlensError, match=r"the data has no labels \(images only\)"):
        lens.ablate(data(), metric="accuracy", mode="zero", resamples=10, progress=False)
