"""Stats on layers that do not put one image first or do not return one plain float32 tensor:
sequence-first tokens, Swin-style windows, tuples and dicts, NaN/inf, float64; also repeated
selections of one call and the rows' order. Each is checked against a naive reference: plain
forward hooks, every activation kept, float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.errors import AnalyzerError

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _lens(model: nn.Module) -> netlens.Lens:
    return netlens.load(model, mean=(0.0,) * 3, std=(1.0,) * 3)


def _captured(model: nn.Module, x: torch.Tensor, name: str, batch: int) -> list[torch.Tensor]:
    """Every call's output of module ``name`` (float64), the calls of each forward stacked
    on a new first axis, one entry per batch (the analyzer's batches)."""
    calls: list[torch.Tensor] = []
    hook = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: calls.append(o.detach().clone().double())
    )
    per_batch = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            calls.clear()
            model(x[s : s + batch])
            per_batch.append(list(calls))
    hook.remove()
    return per_batch


def _dead(units: torch.Tensor, eps: float, channel_axis: int) -> tuple[float, float, int]:
    """Dead-unit and dead-channel fractions of a units' maxima array, and the channel count."""
    dead = units <= eps
    per_channel = dead.movedim(channel_axis, 0).flatten(1).all(1)
    return float(dead.double().mean()), float(per_channel.double().mean()), len(per_channel)


class SeqFirst(nn.Module):
    """Tokens L×N×C, as ``nn.TransformerEncoder`` with ``batch_first=False`` runs them."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, d, 8, 8)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, activation=nn.GELU())
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.enc(self.embed(x).flatten(2).permute(2, 0, 1))
        return self.head(t.mean(0))


def test_sequence_first_tokens_are_units_per_image() -> None:
    """L×N×C: a unit is a (token, channel) of one image, the images on axis 1; a last batch of
    another size is no "activation shape changed" error."""
    torch.manual_seed(0)
    model = SeqFirst().eval()
    x = torch.randn(5, 3, 32, 32)
    names = ["enc.layers.0.linear1", "enc.layers.0.activation"]
    r = _lens(model).run("stats", x, layers=",".join(names), batch_size=3, eps=0.3)
    assert [row["layer"] for row in r.table] == names
    for row in r.table:
        a = torch.cat([b[0] for b in _captured(model, x, row["layer"], 3)], dim=1)  # L×N×C
        units = a.amax(dim=1)
        dead_units, dead_channels, channels = _dead(units, 0.3, 1)
        assert row["shape"] == list(units.shape)
        assert row["values"] == a.numel() and row["mean"] == pytest.approx(float(a.mean()))
        assert row["dead_units"] == pytest.approx(dead_units)
        assert row["dead_channels"] == pytest.approx(dead_channels)
        assert row["channels"] == channels == 32


class Windows(nn.Module):
    """Swin-style window attention's layout: a 4×4-token map cut into 2×2 windows, folded into
    the batch as (N·windows)×T×C, images outer."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, c, 8, 8)
        self.proj = nn.Linear(c, c)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).permute(0, 2, 3, 1)  # N×4×4×C
        n, h, w, c = t.shape
        win = t.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        win = self.proj(win.reshape(n * (h // 2) * (w // 2), 4, c))  # (N·4)×4×C
        return self.head(win.reshape(n, -1, c).mean(1))


def test_window_layers_have_units_over_the_whole_image() -> None:
    """(N·windows)×T×C: a unit is a (window, token, channel) of one image, not a token of any
    window."""
    torch.manual_seed(0)
    model = Windows().eval()
    x = torch.randn(5, 3, 32, 32)
    r = _lens(model).run("stats", x, layers="proj", batch_size=2, eps=0.2)
    (row,) = r.table
    per_image = [b[0].reshape(-1, 4, 4, 8) for b in _captured(model, x, "proj", 2)]
    units = torch.cat(per_image).amax(dim=0)  # windows×T×C
    dead_units, dead_channels, channels = _dead(units, 0.2, 2)
    assert row["shape"] == [4, 4, 8]
    assert row["dead_units"] == pytest.approx(dead_units)
    assert row["dead_channels"] == pytest.approx(dead_channels)
    assert row["channels"] == channels == 8
    assert r.arrays["proj:unit_max"].shape == (4, 4, 8)


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feat": x * 2, "aux": x.mean()}


class Mixed(nn.Module):
    """Layers returning a dict (``d``), tuples (``lstm``, ``attn``) and tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 8, 8)
        self.d = DictOut()
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.d(self.conv(x))["feat"].flatten(2).transpose(1, 2)
        t, _ = self.lstm(t)
        t, _ = self.attn(t, t, t)
        return self.fc(t.mean(1))


def test_layers_without_a_tensor_are_refused_by_name_and_left_out_by_pattern() -> None:
    """A dict output is refused by name and left out by pattern; a tuple whose first element
    is the batch's tokens (a batch-first LSTM's and attention's ``(output, …)``) is read as
    that element, as CAMs and features read it."""
    torch.manual_seed(0)
    model = Mixed().eval()
    lens, x = _lens(model), torch.randn(3, 3, 32, 32)
    with pytest.raises(AnalyzerError, match=r"'d'.*no tensor.*module inside"):
        lens.run("stats", x, layers="conv,d,lstm", batch_size=2)
    r = lens.run("stats", x, layers="conv,fc,d*,l*,type:MultiheadAttention", batch_size=2)
    assert [row["layer"] for row in r.table] == ["conv", "lstm", "attn", "fc"]
    (line,) = r.meta["warnings"]
    assert "'d'" in line and "no tensor" in line and "left out" in line
    got = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: got.update({n: o[0]}))
        for n in ("lstm", "attn")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for row in r.table[1:3]:
        want = got[row["layer"]].double()
        assert row["mean"] == pytest.approx(float(want.mean()), rel=1e-5)
        assert row["max"] == pytest.approx(float(want.max()), rel=1e-6)


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.where(x.abs() < 0.1, 0.0, x))  # NaN below 0, -inf at 0


def test_nan_and_inf_are_counted_apart_and_warned_about() -> None:
    """min/max/mean/std over the finite values; NaN and ±inf in their own counts, so that
    bins, underflow, overflow and nan add up to every value."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Log(), nn.Flatten(), nn.Linear(4 * 100, 2)).eval()
    x = torch.randn(5, 3, 12, 12)
    r = _lens(model).run("stats", x, layers="1", batch_size=2)
    (row,) = r.table
    a = torch.cat([b[0] for b in _captured(model, x, "1", 2)])
    finite = a[torch.isfinite(a)]
    assert row["nan"] == int(a.isnan().sum()) > 0
    assert row["inf"] == int(a.isinf().sum()) > 0
    assert row["values"] == a.numel()
    assert (row["min"], row["max"]) == (float(finite.min()), float(finite.max()))
    assert row["mean"] == pytest.approx(float(finite.mean()), rel=1e-9)
    assert row["std"] == pytest.approx(float(finite.std(correction=0)), rel=1e-9)
    hist = r.arrays["1:hist"]
    assert hist.sum() + row["underflow"] + row["overflow"] + row["nan"] == row["values"]
    (line,) = r.meta["warnings"]
    assert f"'1': {row['nan']} NaN and {row['inf']} infinite" in line


class Step(nn.Module):
    """3e5, or one float32 step (1/32) above it: a first batch narrower than its bins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3e5 + 0.03125 * (x > 0).float()


def test_a_nearly_constant_large_layer_gets_its_histogram() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Step(), nn.Flatten(), nn.Linear(4 * 100, 2)).eval()
    x = torch.randn(5, 3, 12, 12)
    r = _lens(model).run("stats", x, layers="1", batch_size=2)
    (row,) = r.table
    a = torch.cat([b[0] for b in _captured(model, x, "1", 2)])
    assert (row["min"], row["max"]) == (3e5, 3e5 + 0.03125)
    assert row["mean"] == pytest.approx(float(a.mean()), rel=1e-12)
    assert r.arrays["1:hist"].sum() + row["underflow"] + row["overflow"] == a.numel()


class Shared(nn.Module):
    """One ReLU module, registered first and called twice, around a GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.act(x.mean((2, 3))))


def test_one_call_selected_twice_counts_once() -> None:
    torch.manual_seed(0)
    model = Shared().eval()
    x = torch.randn(5, 3, 12, 12)
    ref = _captured(model, x, "act", 2)
    for layers in ("act,act@1", "act@-1,act"):
        r = _lens(model).run("stats", x, layers=layers, batch_size=2)
        second = next(row for row in r.table if row["layer"] in ("act@1", "act@-1"))
        a = torch.cat([b[1] for b in ref])
        assert len(r.table) == 2
        assert second["values"] == a.numel()
        assert second["mean"] == pytest.approx(float(a.mean()), rel=1e-9)


def test_rows_come_in_the_order_the_calls_run() -> None:
    torch.manual_seed(0)
    model = Shared().eval()
    r = _lens(model).run("stats", torch.randn(3, 3, 12, 12), batch_size=2)
    assert [row["layer"] for row in r.table] == ["act@0", "gelu", "act@1"]


class Offset(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c


class Scale(Offset):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c


def test_float64_layers_are_measured_in_float64() -> None:
    """A large offset with a small spread keeps its std; 1e-50 is not zero (float32's 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), Offset(1e6), Scale(1e-50), nn.Flatten(), nn.Linear(400, 2)
    )
    model = model.double().eval()
    x = torch.randn(5, 3, 12, 12, dtype=torch.float64)
    r = _lens(model).run("stats", x, layers="2,3", batch_size=2, hist_range=(-1.0, 2e6))
    for row in r.table:
        a = torch.cat([b[0] for b in _captured(model, x, row["layer"], 2)])
        assert row["mean"] == pytest.approx(float(a.mean()), rel=1e-12)
        assert row["std"] == pytest.approx(float(a.std(correction=0)), rel=1e-9)
        assert (row["min"], row["max"]) == (float(a.min()), float(a.max()))
        assert row["dead_units"] == float((a.amax(0) <= 0).double().mean()) == 0.0
        assert not math.isnan(row["std"]) and np.isfinite(r.arrays[f"{row['layer']}:edges"]).all()
