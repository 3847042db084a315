"""The cached-prefix path gives the naive path's logits bit for bit, on many graph shapes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from netlens.analyzers.ablation import channels as ch
from netlens.analyzers.ablation.engine import Engine
from netlens.analyzers.ablation.modes import (
    UnitStats,
    channel_replacement,
    unit_replacement,
)
from netlens.analyzers.ablation.units import Unit, find_units
from netlens.models.archs import resnet, vgg

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN scales/shifts and stats so no block is a no-op (timm zero-inits the last BN)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=gen) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=gen) + 0.5
    return model.eval()


class SkipNet(nn.Module):
    """A general graph: a long skip from the stem past two units, in-place ops, a functional."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu_(self.stem(x))
        y = self.b(self.a(s))
        y = y + s * 0.5
        y.mul_(2.0)
        return self.head(y.mean((2, 3)))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so the naive fallback runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.sum() > -1e9:
            y = self.b(y)
        return self.fc(y.mean((2, 3)))


def _stats(model: nn.Module, units: list[Unit], x: torch.Tensor) -> dict[str, UnitStats]:
    stats = {u.name: UnitStats() for u in units}
    handles = [
        model.get_submodule(u.name).register_forward_hook(lambda m, i, o, s=stats[u.name]: s.add(o))
        for u in units
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return stats


def _check_all_modes(model: nn.Module, units: list[Unit], x: torch.Tensor, expect_fast: bool):
    engine = Engine(model, [u.name for u in units])
    stats = _stats(model, units, x)
    with torch.no_grad():
        cache = engine.prefix(x)
        assert torch.equal(cache.logits, model(x))
        changed = 0
        for i, u in enumerate(units):
            assert engine.is_fast(u.name) is expect_fast
            for mode in ("identity", "zero", "mean", "noise"):
                rep = unit_replacement(u, mode, stats[u.name], seed=3, key=i)
                fast = engine.ablated(cache, u.name, rep, batch=2)
                slow = engine.naive(x, u.name, rep, batch=2)
                assert torch.equal(fast, slow), (u.name, mode)
                changed += not torch.equal(fast, cache.logits)
        assert changed >= len(units) * 3  # the ablations really change the output
        # the cache is never written into: a second round gives the very same logits
        rep = unit_replacement(units[0], "zero")
        a = engine.ablated(cache, units[0].name, rep, 0)
        assert torch.equal(a, engine.ablated(cache, units[0].name, rep, 0))


def test_timm_resnet18_blocks_bit_identical() -> None:
    model = _randomise_bn(timm.create_model("resnet18", pretrained=False, num_classes=7))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    units, _ = find_units(model, x)
    assert [u.name for u in units] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [u.downsample for u in units] == [False, False] + [True, False] * 3
    _check_all_modes(model, units[::3], x, expect_fast=True)


def test_netlens_resnet_and_vgg_bit_identical() -> None:
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    model = _randomise_bn(resnet(num_classes=4, in_chans=1, img_size=16))
    units, _ = find_units(model, x)
    assert all(u.residual for u in units) and len(units) == 6
    _check_all_modes(model, units[::2] + units[3:4], x, expect_fast=True)
    plain = _randomise_bn(vgg(num_classes=4, in_chans=1, img_size=16))
    units = [u for u in find_units(plain, x)[0] if u.name in ("features.1", "features.4")]
    _check_all_modes(plain, units, x, expect_fast=True)


def test_general_graph_with_long_skip_and_inplace_ops() -> None:
    torch.manual_seed(0)
    model = SkipNet().eval()
    units, _ = find_units(model, torch.randn(1, 3, 8, 8), "a,b")
    assert [u.kind for u in units] == ["layer", "layer"]
    engine = Engine(model, ["a", "b"])
    assert engine.is_fast("a") and engine._frontier["a"]  # the stem output is carried past
    _check_all_modes(model, units, torch.randn(2, 3, 8, 8), expect_fast=True)


class InplaceReadLater(nn.Module):
    """The unit rewrites its input in place (torchvision's ``ReLU(inplace=True)``), and that
    input is read again after it: removing the unit must leave it as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        return self.fc((self.c2(self.act(h)) + h).mean((2, 3)))


def test_a_unit_that_rewrites_its_input_in_place_is_removed_on_both_paths() -> None:
    """The naive path's hook read the unit's input after the unit ran: an in-place ReLU had
    already made it the output, so "identity" changed nothing and "zero" kept the rewrite."""
    torch.manual_seed(0)
    model = InplaceReadLater().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    units, _ = find_units(model, x[:1], "act")
    _check_all_modes(model, units, x, expect_fast=True)
    engine = Engine(model, ["act"])
    removed = InplaceReadLater().eval()
    removed.load_state_dict(model.state_dict())
    removed.act = nn.Identity()
    with torch.no_grad():
        naive = engine.naive(x, "act", unit_replacement(units[0], "identity"), batch=0)
        assert torch.equal(naive, removed(x))
        assert not torch.equal(naive, model(x))


def test_untraceable_model_falls_back_to_naive() -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    engine = Engine(model, ["a", "b"])
    assert engine.trace_error and not engine.is_fast("b")
    units = [Unit("b", "layer")]
    _check_all_modes(model, units, torch.randn(2, 3, 8, 8), expect_fast=False)


def test_residual_identity_keeps_the_shortcut() -> None:
    model = _randomise_bn(timm.create_model("resnet18", pretrained=False, num_classes=3))
    units = {u.name: u for u in find_units(model, torch.randn(1, 3, 32, 32))[0]}
    x = torch.randn(2, 128, 8, 8)
    block = model.layer3[0]  # downsampling: shortcut is a 1×1 conv + BN
    expected = torch.relu(block.downsample(x))
    with torch.no_grad():
        assert torch.equal(units["layer3.0"].skip(x), expected)
        y = torch.randn(2, 256, 4, 4)
        assert torch.equal(units["layer3.1"].skip(y), torch.relu(y))


def test_channel_groups_match_single_naive_runs() -> None:
    model = _randomise_bn(timm.create_model("resnet18", pretrained=False, num_classes=5))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    engine = Engine(model, ["layer3"])
    with torch.no_grad():
        cache = engine.prefix(x)
        stats = UnitStats()
        stats.add(cache.outputs["layer3"])
        for mode in ("zero", "mean", "noise"):
            abls = ch.channel_ablations("layer3", 256, mode, stats, seed=1, group=24)
            assert [len(a.keys) for a in abls] == [24] * 10 + [16]
            out = engine.ablated(cache, "layer3", abls[1].replace, 0, copies=24)
            for g in (0, 13, 23):
                c = 24 + g
                mask = torch.zeros(256, dtype=torch.bool)
                mask[c] = True
                ref = engine.naive(
                    x, "layer3", channel_replacement(mode, stats, mask, seed=1, key=c), 0
                )
                assert torch.equal(out[g * 3 : (g + 1) * 3], ref), (mode, c)
                assert not torch.equal(ref, cache.logits)


@pytest.mark.parametrize("order", ["importance", "random"])
def test_curve_points_and_orders(order: str) -> None:
    drops = torch.tensor([0.1, 0.5, 0.0, 0.3]).numpy()
    orders = ch.orders(drops, seed=0)
    assert list(orders["importance"]) == [1, 3, 0, 2]
    assert sorted(orders["random"]) == [0, 1, 2, 3]
    assert ch.curve_points(4, 17) == [0, 1, 2, 3, 4]
    assert ch.curve_points(512, 5) == [0, 128, 256, 384, 512]
    abls = ch.curve_ablations("u", 4, {order: orders[order]}, "zero", None, group=8)
    assert abls[0].keys == [f"u@{order}:{k}" for k in range(5)]


def _vit() -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=4, depth=3
    )


def _tv_resnet() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=4)


def _bottleneck() -> nn.Module:
    return timm.create_model("resnet26", pretrained=False, num_classes=4)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_vit, ["blocks.0", "blocks.1", "blocks.2"]),
        (_tv_resnet, [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]),
        (_bottleneck, [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]),
    ],
)
def test_other_families_trace_and_match(make, expected) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(make())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    units, _ = find_units(model, x)
    assert [u.name for u in units] == expected
    engine = Engine(model, [u.name for u in units])
    assert engine.check(x) and all(engine.is_fast(u.name) for u in units)
    with torch.no_grad():
        cache = engine.prefix(x)
        for u in units[1::2]:
            module = model.get_submodule(u.name)
            inp = cache.inputs[u.name]
            if hasattr(module, "downsample"):  # the branch is gone, the shortcut and ReLU stay
                short = module.downsample(inp) if module.downsample is not None else inp
                assert torch.equal(u.skip(inp.clone()), torch.relu(short))
            else:  # a ViT block without its branches is the identity
                assert torch.equal(u.skip(inp.clone()), inp)
            rep = unit_replacement(u, "identity")
            assert torch.equal(
                engine.ablated(cache, u.name, rep, 0), engine.naive(x, u.name, rep, 0)
            ), u.name


class Stateful(nn.Module):
    """Python state in forward: a trace bakes in one call's value, so the graph is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.a(x.flatten(1))) * self.calls


def test_graph_that_does_not_reproduce_the_model_is_not_used() -> None:
    torch.manual_seed(0)
    model = Stateful().eval()
    engine = Engine(model, ["a"])
    assert engine.is_fast("a")
    x = torch.randn(3, 1, 2, 2)
    with torch.no_grad():
        assert not engine.check(x)
    assert not engine.is_fast("a") and "does not reproduce" in engine.trace_error


class BatchMixer(nn.Module):
    """The head centres features over the batch: stacking ablations would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        return self.fc(h - h.mean(0, keepdim=True))


@pytest.mark.parametrize(("make", "unit"), [(BatchMixer, "conv"), (SkipNet, "a")])
def test_channel_stacks_fall_back_to_one_by_one_when_unsafe(make, unit) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    engine = Engine(model, [unit])
    n_ch = model.get_submodule(unit if unit == "conv" else "a.0").out_channels
    with torch.no_grad():
        cache = engine.prefix(x)
        (abl,) = ch.channel_ablations(unit, n_ch, "zero", None, group=n_ch)
        out = engine.ablated(cache, unit, abl.replace, 0, copies=n_ch)
        eye = torch.eye(n_ch, dtype=torch.bool)
        for c in range(n_ch):
            ref = engine.naive(x, unit, channel_replacement("zero", None, eye[c]), 0)
            assert torch.equal(out[c * 4 : (c + 1) * 4], ref), c
