"""A model whose forward ends in ``.squeeze()`` (the usual hand-written classifier) returns K
values for one image: netlens reads them as that image's 1×K, as it reads a batch, so a
single image, and the last batch of one image in a dataset, give the same answers as the
same model without the squeeze (they were refused, or read as K images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError
from netlens.output_reader import squeezed_batch_dims

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


class Net(nn.Module):
    def __init__(self, k: int, squeeze: bool, dense: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1)
        )
        self.act = nn.ReLU()
        self.head = nn.Conv2d(16, k, 1) if dense else nn.Linear(16, k)
        self.squeeze, self.dense = squeeze, dense
        with torch.no_grad():
            self.features[1].running_mean.normal_(0, 0.2)
            self.features[1].running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.features(x))
        out = self.head(h) if self.dense else self.head(h.mean((2, 3)))
        return (out.squeeze() if self.squeeze else out) * 3


def _pair(k: int, dense: bool = False) -> tuple[nn.Module, nn.Module]:
    return Net(k, True, dense).eval(), Net(k, False, dense).eval()


def _x(n: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 3, 32, 32)


@pytest.mark.parametrize("k", [10, 1], ids=["10 classes", "one logit"])
def test_one_image_is_read_as_one_row(k: int) -> None:
    squeezed, plain = _pair(k)
    assert squeezed_batch_dims(squeezed, _x(1)) == (1 if k == 1 else 2)
    assert squeezed_batch_dims(plain, _x(1)) is None
    a = netlens.cam(squeezed, _x(1), method="gradcam", layer="features")
    b = netlens.cam(plain, _x(1), method="gradcam", layer="features")
    assert a.table[0]["target"] == b.table[0]["target"]
    assert a.table[0]["probability"] == pytest.approx(b.table[0]["probability"], rel=1e-6)
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-6)


def test_a_last_batch_of_one_image_in_ablate_and_evaluate() -> None:
    squeezed, plain = _pair(10)
    data = (_x(5), torch.arange(5))
    kw = {"batch_size": 2, "metric": "kl", "mode": "zero", "resamples": 10, "progress": False}
    a, b = netlens.ablate(squeezed, data, **kw), netlens.ablate(plain, data, **kw)
    assert [r["value"] for r in a.rows] == pytest.approx([r["value"] for r in b.rows], rel=1e-5)
    ev = {"batch_size": 2, "metrics": ["deletion", "insertion"], "layer": "features"}
    ea, eb = (netlens.load(m).evaluate(data, **ev, progress=False) for m in (squeezed, plain))
    assert ea.table and [r["mean"] for r in ea.table] == pytest.approx(
        [r["mean"] for r in eb.table], rel=1e-5
    )


def test_a_dense_model_squeezed_to_one_mask() -> None:
    """A binary segmenter's 1×1×H×W squeezed to H×W for one image (N×H×W for a batch)."""
    squeezed, plain = _pair(1, dense=True)
    assert squeezed_batch_dims(squeezed, _x(1)) == 3
    a = netlens.cam(squeezed, _x(1), method="gradcam", layer="features")
    b = netlens.cam(plain, _x(1), method="gradcam", layer="features")
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-6)


class BatchMean(nn.Module):
    """Not a squeeze: one row for the whole batch, whatever its size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((0, 2, 3)))


def test_an_output_that_is_not_one_row_per_image_is_still_refused() -> None:
    assert squeezed_batch_dims(BatchMean().eval(), _x(2)) is None
    with pytest.raises(NetlensError, match="not one row per image"):
        netlens.cam(BatchMean().eval(), _x(2), method="gradcam", layer="conv")


class SigmoidSeg(nn.Module):
    """A segmenter ending in a sigmoid, its channel axis squeezed away or put back."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features, self.head, self.how = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 1, 1), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(torch.relu(self.features(x)))
        if self.how == "squeeze1":  # BCELoss on N×H×W masks
            return torch.sigmoid(z).squeeze(1)
        if self.how == "unsqueeze":  # N×H×W computed, the channel put back
            return torch.sigmoid(z[:, 0]).unsqueeze(1)
        if self.how == "inplace":
            return torch.sigmoid(z.mean((2, 3))).squeeze_()
        return torch.sigmoid(z.mean((2, 3))) if self.how == "cls" else torch.sigmoid(z)


@pytest.mark.parametrize(
    ("how", "ref"), [("squeeze1", "plain"), ("unsqueeze", "plain"), ("inplace", "cls")]
)
def test_a_sigmoid_behind_a_squeeze_or_unsqueeze_is_read_as_one(how: str, ref: str) -> None:
    from netlens.output_reader import ends_in_sigmoid

    model, same = SigmoidSeg(how).eval(), SigmoidSeg(ref).eval()
    assert ends_in_sigmoid(model, _x(2)) and ends_in_sigmoid(same, _x(2))
    np.testing.assert_allclose(
        netlens.load(model).predict(_x(2)), netlens.load(same).predict(_x(2)), atol=1e-6
    )


def test_a_flattened_output_counts_no_classes() -> None:
    """``.flatten()`` of N×K is N·K values: no class count (not 1), refused at the forward."""
    from netlens.models.classes import output_count
    from netlens.preprocess import Preprocess

    class Flat(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x).flatten()

    model = Flat(5, False).eval()
    assert output_count(model, Preprocess(size=(32, 32))) is None
    lens = netlens.load(model, input_size=32, classes=list("abcde"))
    with pytest.raises(NetlensError, match="not one row per image"):
        lens.predict(_x(2))
