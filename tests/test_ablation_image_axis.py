"""ablate --mode mean/noise on units whose output does not hold the images first: the
per-element mean is over the images only, whatever the batch size, for sequence-first token
layers (L×N×C, as ``nn.MultiheadAttention``'s default and CLIP keep them) and window-partitioned
layers ((N·windows)×T×C, as Swin's window attention); a unit whose output interleaves the
images is refused in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError
from netlens.image_axis import ImageAxis, image_axes

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # no preprocessing recorded, etc.
]


class SeqBlock(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, 2)  # L×N×C
        self.ln2, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 32), nn.GELU())
        self.proj = nn.Linear(32, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.proj(self.mlp(self.ln2(x)))


class SeqFirst(nn.Module):
    """CLIP-style: tokens kept sequence-first; the head reads one token, so a mean over the
    tokens is not the same replacement as a mean over the images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 16, 8, 8)
        self.blocks = nn.Sequential(SeqBlock(), SeqBlock())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).permute(2, 0, 1)  # N C L -> L N C
        return self.head(self.blocks(t)[0]) * 4


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    n, c, h, wd = x.shape
    x = x.view(n, c, h // w, w, wd // w, w).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n * (h // w) * (wd // w), w * w, c)  # images outer, as Swin


class WindowMix(nn.Module):
    def __init__(self, c: int, outer_images: bool = True) -> None:
        super().__init__()
        self.fc, self.outer = nn.Linear(c, c), outer_images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.fc(_windows(x, 4))
        if not self.outer:  # windows outer, images inner: each image's windows apart
            n = x.shape[0]
            t = t.view(n, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        return t


class Windowed(nn.Module):
    def __init__(self, outer_images: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.win = WindowMix(8, outer_images)
        self.head = nn.Linear(8 * 16 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * self.head(torch.relu(self.win(self.stem(x))).view(x.shape[0], -1))


def _x(n: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 3, 32, 32)


def _kl(model: nn.Module, x: torch.Tensor, layer: str, replace) -> float:
    with torch.no_grad():
        p = model(x).log_softmax(1)
        h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: replace(o))
        try:
            q = model(x).log_softmax(1)
        finally:
            h.remove()
    return float((p.exp() * (p - q)).sum(1).mean())


def _output(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    got = []
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def _ablate(model, x, layer, **kw):
    kw = {"metric": "kl", "resamples": 10, "progress": False} | kw
    return netlens.ablate(model, x, layers=layer, **kw)


@pytest.mark.parametrize("batch_size", [2, 4, 8])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "naive"])
def test_sequence_first_mean_is_over_the_images(batch_size: int, fast: bool) -> None:
    model, x, layer = SeqFirst().eval(), _x(), "blocks.1.mlp"
    mean = _output(model, x, layer).mean(1, keepdim=True)  # per token and channel
    want = _kl(model, x, layer, lambda o: mean.expand_as(o).clone())
    res = _ablate(model, x, layer, mode="mean", batch_size=batch_size, fast=fast)
    assert [r["value"] for r in res.rows if r["kind"] != "baseline"] == pytest.approx(
        [want], rel=1e-4, abs=1e-7
    )
    assert want > 1e-3  # the replacement matters: a mean over tokens would give another KL

    channels = [0, 5, 9]
    got = _ablate(model, x, layer, mode="mean", batch_size=batch_size, fast=fast, channels=channels)
    values = {r["channel"]: r["value"] for r in got.rows if r["kind"] == "channel"}

    def one(c: int):
        def replace(o: torch.Tensor) -> torch.Tensor:
            o = o.clone()
            o[..., c] = mean[..., c]
            return o

        return replace

    assert [values[c] for c in channels] == pytest.approx(
        [_kl(model, x, layer, one(c)) for c in channels], rel=1e-4, abs=1e-7
    )


def test_sequence_first_noise_runs_on_uneven_batches_and_repeats() -> None:
    model, x = SeqFirst().eval(), _x()
    kw = {"mode": "noise", "batch_size": 4, "seed": 2}
    one, again = _ablate(model, x, "blocks.0", **kw), _ablate(model, x, "blocks.0", **kw)
    assert one.rows == again.rows and one.rows[0]["value"] > 0


def test_windowed_unit_mean_keeps_each_window_position() -> None:
    ramp = torch.linspace(0, 1, 32)
    x = 0.2 * _x() + (ramp[:, None] * ramp[None, :])  # windows see other parts of a pattern
    model = Windowed().eval()
    out = _output(model, x, "win")  # (6 · 16 windows) × 16 × 8
    mean = out.view(6, 16, 16, 8).mean(0)  # per window, token and channel
    want = _kl(model, x, "win", lambda o: mean.repeat(o.shape[0] // 16, 1, 1))
    pooled = out.mean(0, keepdim=True)  # the windows averaged too: another answer
    assert abs(_kl(model, x, "win", lambda o: pooled.expand_as(o).clone()) - want) > 0.1 * want
    res = _ablate(model, x, "win", mode="mean", batch_size=4)
    assert res.rows[0]["value"] == pytest.approx(want, rel=1e-3)
    assert want > 1e-3


def test_axes_found_for_each_kind_of_unit() -> None:
    seq, win = SeqFirst().eval(), Windowed().eval()
    x = _x(2)
    assert image_axes(seq, x, ["blocks.0", "embed"]) == {
        "blocks.0": [ImageAxis(1, 1)],
        "embed": [ImageAxis(0, 1)],
    }
    assert image_axes(win, x[:1], ["win"]) == {"win": [ImageAxis(0, 16)]}  # one image: twice


def test_a_unit_that_interleaves_the_images_is_refused_in_one_line() -> None:
    model = Windowed(outer_images=False).eval()
    with pytest.raises(NetlensError, match=r"not each image.s together.*--mode zero") as err:
        _ablate(model, _x(), "win", mode="mean", batch_size=4)
    assert "\n" not in str(err.value)
    assert _ablate(model, _x(), "win", mode="zero", batch_size=4).rows[0]["value"] > 0


class PosTable(nn.Module):
    """A positional table: L×C whatever the batch (``nn.Embedding(L, C)(arange(L))``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.pos = nn.Conv2d(3, 16, 8, 8), nn.Embedding(16, 16)
        self.act, self.head = nn.ReLU(), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # N × 16 × 16
        p = self.act(self.pos(torch.arange(16, device=x.device)))  # 16 × 16, no images
        return 4 * self.head((t + p).mean(1))


def test_an_output_without_images_is_its_own_mean_and_its_own_units() -> None:
    model, x = PosTable().eval(), _x()
    assert image_axes(model, x, ["pos"]) == {"pos": [ImageAxis(None)]}
    res = _ablate(model, x, "pos", mode="mean", batch_size=4)
    assert res.rows[0]["value"] == pytest.approx(0.0, abs=1e-9)  # the mean is the table
    row = netlens.load(model).run("stats", (x, torch.zeros(6)), layers=["act"]).table[0]
    table = torch.relu(model.pos.weight.detach())
    assert row["shape"] == [16, 16]
    assert row["dead_units"] == pytest.approx(float((table <= 0).double().mean()))


class PerImage(nn.Module):
    """A forward that loops over the images (multi-crop, MIL): ``act`` runs once per image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.act, self.head = nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.act(self.conv(x[i : i + 1])).mean((2, 3)) for i in range(len(x))]
        return 4 * self.head(torch.cat(feats))


def test_a_unit_run_once_per_image_is_refused_for_means_in_one_line() -> None:
    model, x = PerImage().eval(), _x()
    with pytest.raises(NetlensError, match=r"'act' runs 1 time\(s\) for 1 image\(s\) and 2"):
        _ablate(model, x, "act", mode="mean", batch_size=4)
    assert _ablate(model, x, "act", mode="zero", batch_size=4).rows[0]["value"] > 0


class NoInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 16, 16))

    def forward(self) -> torch.Tensor:
        return self.table


class WithNoInput(PosTable):
    def __init__(self) -> None:
        super().__init__()
        self.bias = NoInput()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2) + self.bias()
        return 4 * self.head(t.mean(1))


def test_a_unit_that_takes_no_input_is_refused_in_one_line_on_the_traced_path() -> None:
    with pytest.raises(NetlensError, match="takes no tensor as its first argument"):
        _ablate(WithNoInput().eval(), _x(), "bias", mode="zero", batch_size=4)


class TwoAtLeast(nn.Module):
    """``.squeeze()`` before a BatchNorm1d: runs on two images or more, never on one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.act = nn.Conv2d(3, 8, 3), nn.ReLU()
        self.norm, self.head = nn.BatchNorm1d(8), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * self.head(self.norm(self.act(self.conv(x)).mean((2, 3)).squeeze()))


def test_a_model_that_cannot_run_on_one_image_is_probed_with_two() -> None:
    model, x = TwoAtLeast().eval(), _x(4)
    assert image_axes(model, x, ["act"]) == {"act": [ImageAxis(0, 1)]}
    outs = []
    h = model.act.register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        model(x)
    h.remove()
    mean = outs[0].mean(0, keepdim=True)
    want = _kl(model, x, "act", lambda o: mean.expand_as(o).clone())
    res = _ablate(model, x, "act", mode="mean", batch_size=2)
    assert res.rows[0]["value"] == pytest.approx(want, rel=2e-2)  # a KL of 2e-5: float noise
    lens, data = netlens.load(model), (x, torch.arange(4))
    assert lens.run("stats", data, layers=["act"], batch_size=2).table[0]["shape"] == [8, 30, 30]
    ev = lens.evaluate(data, metrics=["deletion"], layer="conv", batch_size=2, progress=False)
    assert ev.table
