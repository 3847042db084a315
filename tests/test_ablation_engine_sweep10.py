"""The cached-prefix engine: stacked channel ablations accepted up to float rounding (kernels
that round differently per batch size), and a model with one untraceable block keeps the cached
path for the units outside that block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.ablation import channels as ch
from netlens.analyzers.ablation.engine import Engine
from netlens.analyzers.ablation.modes import channel_replacement, unit_replacement
from netlens.analyzers.ablation.units import Unit

pytestmark = [pytest.mark.usefixtures("one_thread")]


# -- 1. stacked channel ablations: float rounding of batch-size-dependent kernels -------------


class Mobileish(nn.Module):
    """Inverted residuals (pointwise, depthwise, pointwise): oneDNN's kernels for these round
    differently with the batch size, so a stacked suffix differs from one copy in the last bits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(32, 128, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1, groups=128)
        )
        self.tail = nn.Sequential(
            nn.Conv2d(128, 256, 1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, groups=256),
            nn.Conv2d(256, 256, 1),
        )
        self.fc = nn.Linear(256, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.tail(self.block(torch.relu(self.stem(x)))).mean((2, 3)))


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _batches_seen(module: nn.Module) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    return seen, handle


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(b.abs().max()))


def test_stacked_channels_are_kept_when_they_differ_only_in_float_rounding() -> None:
    """The stack check demanded torch.equal between the stacked suffix and one copy run alone;
    oneDNN's pointwise/depthwise kernels round differently per batch size (~1e-7 here), so
    every channel ran copy by copy (efficientnet_b0: 26.5 s instead of 7.2 s)."""
    torch.manual_seed(0)
    model = Mobileish().eval()
    engine = Engine(model, ["block"])
    n_ch = 128
    eye = torch.eye(n_ch, dtype=torch.bool)
    seen, handle = _batches_seen(model.fc)  # a leaf of the graph, after the unit
    try:
        with torch.no_grad():
            for n in (4, 3):  # a full batch, then a smaller last batch: each checked once
                x = _images(n, seed=n)
                cache = engine.prefix(x)
                abls = ch.channel_ablations("block", n_ch, "zero", None, group=16)
                seen.clear()
                outs = [engine.ablated(cache, "block", a.replace, 0, len(a.keys)) for a in abls]
                # the stacked suffix on 16 copies, plus one copy alone (the check), then stacked
                assert seen == [16 * n, n] + [16 * n] * (len(abls) - 1), seen
                out = torch.cat(outs, 0)
                for c in range(0, n_ch, 9):
                    ref = engine.naive(x, "block", channel_replacement("zero", None, eye[c]), 0)
                    _assert_close(out[c * n : (c + 1) * n], ref)
    finally:
        handle.remove()
    assert not engine._no_stack


class SlightMixer(nn.Module):
    """The head takes 1% of the batch mean off each image: stacking copies would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        return self.fc(h - 0.01 * h.mean(0, keepdim=True))


def test_a_suffix_that_mixes_images_slightly_still_runs_copy_by_copy() -> None:
    torch.manual_seed(0)
    model = SlightMixer().eval()
    x = _images(4, 8)
    engine = Engine(model, ["conv"])
    with torch.no_grad():
        cache = engine.prefix(x)
        (abl,) = ch.channel_ablations("conv", 6, "zero", None, group=6)
        out = engine.ablated(cache, "conv", abl.replace, 0, copies=6)
        eye = torch.eye(6, dtype=torch.bool)
        for c in range(6):
            ref = engine.naive(x, "conv", channel_replacement("zero", None, eye[c]), 0)
            assert torch.equal(out[c * 4 : (c + 1) * 4], ref), c
    assert "conv" in engine._no_stack


# -- 3. one untraceable block: only the units inside it take the naive path -------------------


class Plain(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


class Odd(nn.Module):
    """Data-dependent control flow on a shape (like timm's MobileVitBlock): fx cannot trace it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.inner = Plain(c)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if y.shape[-1] != x.shape[-1]:
            y = nn.functional.interpolate(y, size=x.shape[-2:])
        return self.proj(y) * 0.5 + x


class OneOdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b0 = Plain(8)
        self.stage = nn.Sequential(Plain(8), Odd(8))
        self.b2 = Plain(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b2(self.stage(self.b0(self.stem(x)))).mean((2, 3)))


class OddHead(nn.Module):
    """The untraceable code is in a head that holds no unit: every unit keeps the cached path."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.sum() > -1e9:
            x = x.mean((2, 3))
        return self.fc(x)


class WithOddHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b0, self.b1 = Plain(8), Plain(8)
        self.head = OddHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b1(self.b0(self.stem(x))))


def _hooked_zero(model: nn.Module, unit: str, x: torch.Tensor, channel: int | None = None):
    """The reference: the model run with a forward hook zeroing the unit's output (or one of
    its channels)."""

    def zero(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if channel is None:
            return torch.zeros_like(out)
        out = out.clone()
        out[:, channel] = 0
        return out

    handle = model.get_submodule(unit).register_forward_hook(zero)
    try:
        return model(x)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("make", "units", "naive"),
    [
        (OneOdd, ["b0", "stage.0", "stage.1.inner", "b2"], {"stage.1.inner"}),
        (WithOddHead, ["b0", "b1"], set()),
    ],
)
def test_one_untraceable_module_sends_only_its_units_to_the_naive_path(make, units, naive):
    """One trace failure sent every unit to the naive path (timm mobilevit_xxs: 0 of 12 units
    cached; 3 of 12 now, 3.67 s -> 1.90 s)."""
    torch.manual_seed(0)
    model = make().eval()
    x = _images(3, 16)
    engine = Engine(model, units)
    with torch.no_grad():
        assert engine.check(x)
        assert {u for u in units if not engine.is_fast(u)} == naive
        assert (engine.trace_error is None) == (not naive)
        cache = engine.prefix(x)
        assert torch.equal(cache.logits, model(x))
        for u in units:
            rep = unit_replacement(Unit(u, "layer"), "zero")
            ref = _hooked_zero(model, u, x)
            assert not torch.equal(ref, cache.logits)
            assert torch.equal(engine.ablated(cache, u, rep, 0), ref), u
            assert torch.equal(engine.naive(x, u, rep, 0), ref), u
            (abl,) = ch.channel_ablations(u, 8, "zero", None, group=8)
            out = engine.ablated(cache, u, abl.replace, 0, copies=8)
            for c in range(8):
                _assert_close(out[c * 3 : (c + 1) * 3], _hooked_zero(model, u, x, c))


def test_a_study_on_a_model_with_one_untraceable_block_matches_the_naive_study() -> None:
    torch.manual_seed(0)
    model = OneOdd().eval()
    x = _images(6, 16)
    lens = netlens.load(model)
    with torch.no_grad():
        y = model(x).argmax(1)
    layers = "b0,stage.0,stage.1.inner,b2"
    kw = dict(layers=layers, mode="zero", metric="kl", resamples=10, progress=False)
    fast = lens.ablate((x, y), **kw)
    slow = lens.ablate((x, y), fast=False, **kw)
    assert fast.meta["paths"] == {
        "b0": "cached",
        "stage.0": "cached",
        "stage.1.inner": "naive",
        "b2": "cached",
    }
    assert "stage.1 does not trace" in fast.meta["trace_error"]
    assert {r["key"]: r["value"] for r in fast.rows} == {r["key"]: r["value"] for r in slow.rows}
