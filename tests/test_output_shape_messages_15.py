"""An output that is not one row per image, told by its cause (sweep 15, onnx2torch models):
a sequence-first T×N×C output (a CTC recogniser's) is to be returned batch-first, a model with
a fixed batch (an ONNX export's Reshape to [1, ...]) is to be run one image at a time; only a
squeezed batch axis is told to return N×K. Each advice is followed here, and runs."""

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


class CTC(nn.Module):
    """Conv features → per-column logits, sequence first (T, N, C); ``first``: (N, T, C)."""

    def __init__(self, first: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc, self.first = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 16, 12), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = torch.relu(self.conv(x)).flatten(1, 2).permute(2, 0, 1)  # W (T), N, 8·16
        out = self.fc(seq)
        return out.permute(1, 0, 2) if self.first else out  # the advice, followed


class Batch1(nn.Module):
    """An ONNX export with a fixed batch of 1: its Reshape folds a batch into one row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.cls = nn.Conv2d(3, 8, 3, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.cls(torch.relu(self.conv(x))).reshape(1, 2, -1).transpose(1, 2)
        return z[:, 5]  # one anchor's two class logits


def _x(n: int, c: int = 1, h: int = 16, w: int = 40) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, c, h, w)


@pytest.mark.parametrize("n", [1, 2])
def test_a_sequence_first_output_is_told_to_be_returned_batch_first(n: int) -> None:
    with pytest.raises(NetlensError) as e:
        netlens.cam(CTC().eval(), _x(n), target=lambda out: out[5, :, 3], layer="conv")
    msg = str(e.value)
    assert f"(40, {n}, 12)" in msg and "axis 1" in msg and "sequence-first" in msg
    assert "out.permute(1, 0, 2)" in msg and ".squeeze(1)" not in msg


def test_the_sequence_first_advice_runs() -> None:
    r = netlens.cam(CTC(first=True).eval(), _x(2), target=lambda out: out[:, 5, 3], layer="conv")
    assert r.heatmaps.shape == (2, 16, 40)


@pytest.mark.parametrize(
    ("method", "n", "fix"),
    [
        ("ablationcam", 1, {"batch_size": 1}),
        ("scorecam", 1, {"batch_size": 1}),
        ("gradcam", 2, {"chunk": 1}),
        ("ablationcam", 2, {"batch_size": 1, "chunk": 1}),
    ],
)
def test_a_fixed_batch_is_told_to_run_one_image_at_a_time(method: str, n: int, fix: dict) -> None:
    x = _x(n, 3, 32, 32)
    with pytest.raises(NetlensError) as e:
        netlens.cam(Batch1().eval(), x, layer="conv", method=method)
    msg = str(e.value)
    assert "one image at a time" in msg and "--batch-size 1" in msg and "--chunk 1" in msg
    assert "batch_size=1" in msg and ".squeeze(1)" not in msg
    r = netlens.cam(Batch1().eval(), x, layer="conv", method=method, **fix)  # the advice runs
    assert r.heatmaps.shape == (n, 32, 32)


def test_a_fixed_batch_in_evaluate_runs_with_the_advice() -> None:
    data = (_x(3, 3, 32, 32), torch.tensor([0, 1, 0]))
    kw = {"metrics": ["deletion"], "layer": "conv", "steps": 4, "progress": False}
    lens = netlens.load(Batch1().eval(), input_size=32)
    with pytest.raises(NetlensError, match="--chunk 1"):
        lens.evaluate(data, **kw)
    assert lens.evaluate(data, **kw, chunk=1, batch_size=1).table


class Flat(nn.Module):
    """``.flatten()`` of N×K: a squeezed or flattened batch axis, as before."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3))).flatten()


def test_a_flattened_batch_keeps_its_advice() -> None:
    with pytest.raises(NetlensError) as e:
        netlens.cam(Flat().eval(), _x(2, 3, 32, 32), method="gradcam", layer="conv")
    msg = str(e.value)
    assert "(10,) for 2 image(s)" in msg and "one vector of 10 values" in msg
    assert "return N×K (.flatten(1))" in msg and "one image at a time" not in msg


def test_a_squeezed_image_keeps_its_advice() -> None:
    with pytest.raises(NetlensError) as e:
        netlens.cam(Flat().eval(), _x(1, 3, 32, 32), method="gradcam", layer="conv")
    assert "squeezes its batch axis" in str(e.value) and ".squeeze(1)" in str(e.value)


@pytest.mark.parametrize(
    ("shape", "n", "said"),
    [
        ((4, 10), 2, "but 2 rows per image (augmented copies stacked on the batch?)"),
        ((4, 2), 2, "axis 1; wrap the model"),  # and the copies' reading beside it
        ((3, 10), 2, "; return one row per image (N×K, N×K×H×W)"),
    ],
)
def test_several_rows_per_image_are_said_as_such(shape, n, said) -> None:  # noqa: ANN001
    from netlens.output_rows import rows_refusal

    msg = rows_refusal(torch.zeros(shape), n)
    assert said in msg and "squeeze" not in msg
    assert ("rows per image" in msg) is (shape[0] % n == 0)
