"""``auto`` on converted (onnx2torch-like) models: a sequence-first LSTM output, a detector's
head tensor read as a tiny token grid, an inner detector's returned list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netlens.activations import to_spatial
from netlens.errors import AnalyzerError
from netlens.layers import auto_layer


class _Transpose(nn.Module):  # onnx2torch's Transpose
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.permute(0, 2, 1, 3)


class _CRNN(nn.Module):
    """A conv, then a bidirectional LSTM whose T×N×2×H output (sequence first) is 4-D."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = nn.LSTM(4 * 8, 6, bidirectional=True)
        self.tr = _Transpose()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x)).flatten(1, 2).permute(2, 0, 1)  # T, N, F
        y, _ = self.rnn(f)
        t, n = y.shape[:2]
        y = self.tr(y.view(t, n, 2, 6).permute(0, 2, 1, 3))  # T, N, 2, H
        return self.fc(y.flatten(2)).permute(1, 0, 2)  # N, T, 5


@pytest.mark.parametrize("batch", [1, 2])
def test_auto_skips_sequence_first_4d_output(batch: int) -> None:
    torch.manual_seed(0)
    assert auto_layer(_CRNN().eval(), torch.rand(batch, 1, 8, 20)) == "conv"


class _Cat(nn.Module):  # onnx2torch's Concat
    def forward(self, *t: torch.Tensor) -> torch.Tensor:
        return torch.cat(t, 2)


class _Detector(nn.Module):
    """YOLOX-like: per level cat([box, obj, cls]) flattened, levels concatenated: N×6×A."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(3, 4, 3, 8, 1)
        self.b2 = nn.Conv2d(4, 4, 3, 2, 1)
        self.heads = nn.ModuleList(nn.Conv2d(4, 6, 1) for _ in range(2))
        self.cat = _Cat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = torch.relu(self.b1(x))
        f2 = torch.relu(self.b2(f1))
        outs = [h(f).flatten(2) for h, f in zip(self.heads, (f1, f2), strict=True)]
        return self.cat(*outs).permute(0, 2, 1)  # N, A, 6


class _Score(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)[:, 10, 5]


def test_auto_skips_detector_head_read_as_tiny_token_grid() -> None:
    torch.manual_seed(0)
    model = _Score(_Detector()).eval()
    assert auto_layer(model, torch.rand(1, 3, 256, 256)) == "m.heads.1"


def test_tiny_token_grid_on_a_large_input_is_refused() -> None:
    """6 "tokens" of a 256×256 input are no patch grid (2 prefix + 2×2: 128-pixel patches)."""
    model = _Detector().eval()
    with pytest.raises(AnalyzerError, match="patch grid"):
        to_spatial(torch.rand(1, 6, 80), model, "cat", hw=(256, 256))


class _Pico(nn.Module):
    """A detector returning a list of per-level N×L×K class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 8, 1)
        self.b = nn.Conv2d(4, 4, 3, 2, 1)
        self.sa = nn.Conv2d(4, 10, 1)
        self.sb = nn.Conv2d(4, 10, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | tuple[torch.Tensor, ...]:
        f = torch.relu(self.a(x))
        h = torch.relu(self.b(f))
        return [
            self.sa(f).sigmoid().flatten(2).transpose(1, 2),
            self.sb(h).sigmoid().flatten(2).transpose(1, 2),
        ]


class _PicoTuple(_Pico):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(super().forward(x))


class _One(nn.Module):
    def __init__(self, m: nn.Module, level: int) -> None:
        super().__init__()
        self.m, self.level = m, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)[self.level][:, 5, 0]


@pytest.mark.parametrize("inner", [_Pico, _PicoTuple])
@pytest.mark.parametrize("level", [0, 1])
def test_auto_skips_inner_module_whose_returned_sequence_is_indexed(
    inner: type[nn.Module], level: int
) -> None:
    torch.manual_seed(0)
    picked = auto_layer(_One(inner(), level).eval(), torch.rand(1, 3, 160, 128))
    assert picked == ("m.sa", "m.sb")[level]  # the level the score comes from
