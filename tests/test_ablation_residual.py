"""Residual blocks recognised by what they compute, on models netlens did not write.

Each architecture is built with random weights and randomised normalisation and layer-scale
parameters (timm zero-initialises residual branches, ConvNeXt scales them by 1e-6: left as they
are, removing a branch would change nothing and these tests could not fail). The blocks netlens
finds are compared with the blocks the libraries themselves mark (``has_skip``,
``use_res_connect``...), and identity-ablated logits with a copy of the model in which the block
is replaced by a hand-written module computing the block without its branch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import netlens
from netlens.analyzers.ablation.engine import Engine
from netlens.analyzers.ablation.modes import unit_replacement
from netlens.analyzers.ablation.units import find_units, is_norm

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm statistics and affine parameters, random layer scales; eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) + 0.5

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean = torch.randn(m.running_mean.shape, generator=gen) * 0.1
            m.running_var = uniform(m.running_var)
        if is_norm(m) and getattr(m, "weight", None) is not None:
            m.weight.data = uniform(m.weight)
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
    for name, p in model.named_parameters():
        if name.split(".")[-1] in ("gamma", "layer_scale"):
            p.data = uniform(p)
    return model.eval()


class Without(nn.Module):
    """A block with its residual branch removed, written out by hand for the test."""

    def __init__(self, block: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.block, self.fn = block, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.block, x)


def _shortcut_only(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def _timm_resnet_block(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return b.act2(b.downsample(x) if b.downsample is not None else x)


def _tv_resnet_block(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(b.downsample(x) if b.downsample is not None else x)


def _convnext_block(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return b.shortcut(x)


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **kw)


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(num_classes=5)


def _flagged(attr: str) -> Callable[[nn.Module], list[str]]:
    """The blocks a library marks as adding their input back."""
    return lambda m: [n for n, mod in m.named_modules() if getattr(mod, attr, False) is True]


def _resnet_blocks(m: nn.Module) -> list[str]:
    return [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def _named(prefix: str, count: int) -> Callable[[nn.Module], list[str]]:
    return lambda m: [f"{prefix}{i}" for i in range(count)]


def _convnext_blocks(m: nn.Module) -> list[str]:
    return [
        f"stages.{s}.blocks.{b}" for s, st in enumerate(m.stages) for b in range(len(st.blocks))
    ]


CASES = {
    "timm-resnet18": (
        _timm("resnet18"),
        _resnet_blocks,
        {"layer2.0": _timm_resnet_block, "layer1.1": _timm_resnet_block},
    ),
    "timm-efficientnet_b0": (
        _timm("efficientnet_b0"),
        _flagged("has_skip"),
        {"blocks.1.1": _shortcut_only, "blocks.5.3": _shortcut_only},
    ),
    "timm-mobilenetv3_small_100": (
        _timm("mobilenetv3_small_100"),
        _flagged("has_skip"),
        {"blocks.2.1": _shortcut_only},
    ),
    "timm-convnext_atto": (
        _timm("convnext_atto"),
        _convnext_blocks,
        {"stages.1.blocks.0": _convnext_block},
    ),
    "timm-vit_tiny": (
        _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3),
        _named("blocks.", 3),
        {"blocks.1": _shortcut_only},
    ),
    "tv-resnet18": (
        _tv("resnet18"),
        _resnet_blocks,
        {"layer3.0": _tv_resnet_block, "layer1.0": _tv_resnet_block},
    ),
    "tv-mobilenet_v2": (
        _tv("mobilenet_v2"),
        _flagged("use_res_connect"),
        {"features.3": _shortcut_only, "features.16": _shortcut_only},
    ),
}


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocks_found_and_identity_removes_the_branch(case: str) -> None:
    make, expected_blocks, references = CASES[case]
    torch.manual_seed(0)
    model = randomise(make())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    units, _ = find_units(model, x)
    names = [u.name for u in units]
    assert names == expected_blocks(model)
    assert all(u.residual and not is_norm(model.get_submodule(u.name)) for u in units)
    engine = Engine(model, names)
    assert engine.check(x)
    by_name = {u.name: u for u in units}
    with torch.no_grad():
        intact = model(x)
        cache = engine.prefix(x)
        for name, fn in references.items():
            rep = unit_replacement(by_name[name], "identity")
            fast, naive = engine.ablated(cache, name, rep, 0), engine.naive(x, name, rep, 0)
            ref_model = _swap(copy.deepcopy(model), name, Without(model.get_submodule(name), fn))
            reference = ref_model(x)
            assert torch.equal(fast, naive), name
            assert torch.equal(naive, reference), name
            assert not torch.equal(reference, intact), name
            block, inp = model.get_submodule(name), cache.inputs[name]
            full, skipped = block(inp.clone()), fn(block, inp.clone())
            change = (full - skipped).norm() / full.norm()
            assert change > 0.05, (name, change)  # the branch carries real weight


def _spread_head(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A timm head on standardised features, so the logits vary from image to image."""
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        head = model.get_classifier()
        weight = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(3))
        head.weight.copy_(weight / (feats.std(0) + 1e-6))
        head.bias.copy_(-head.weight @ feats.mean(0))
    return model


def test_study_end_to_end_on_efficientnet_with_kl_against_reference() -> None:
    torch.manual_seed(0)
    model = randomise(timm.create_model("efficientnet_b0", pretrained=False, num_classes=5))
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, 32, 32, generator=gen), torch.randint(0, 5, (6,), generator=gen)
    _spread_head(model, x)
    res = netlens.ablate(model, (x, y), metric="kl", batch_size=6, resamples=200)
    assert [r["unit"] for r in res.rows] == _flagged("has_skip")(model)
    assert res.meta["harm"] == "increase" and res.baseline["value"] == 0.0
    with torch.no_grad():
        log_p = F.log_softmax(model(x).double(), 1)
        for row in res.rows[::3]:
            ref_model = _swap(copy.deepcopy(model), row["unit"], nn.Identity())
            log_q = F.log_softmax(ref_model(x).double(), 1)
            kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean").item()
            assert kl > 1e-4 and row["value"] == pytest.approx(kl, rel=1e-9)
            assert row["increase"] == row["delta"] == row["value"]
            assert row["ci_low"] <= row["value"] <= row["ci_high"]


class CifarBlock(nn.Module):
    """A user's own block (the common CIFAR ResNet layout): relu(branch(x) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_function(x) + self.shortcut(x))


class TwoPaths(nn.Module):
    """Inception-like: two equal parallel convolutions summed. No shortcut: not residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


class DenseLayer(nn.Module):
    """DenseNet-like: concatenates its input, adds nothing."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], 1)[:, : x.shape[1]]


class InlineGelu(nn.Module):
    """A conv then a GELU written out: ``x + 0.044715 x³`` adds a weightless term, no branch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return 0.5 * h * (1 + torch.tanh(0.79788456 * (h + 0.044715 * h**3)))


class Gated(nn.Module):
    """Residual, but with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if x.sum() > -1e9 else x


def _mixed_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        CifarBlock(8, 8, 1),
        CifarBlock(8, 16, 2),
        TwoPaths(16),
        DenseLayer(16),
        InlineGelu(16),
        Gated(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def test_own_blocks_recognised_and_look_alikes_not() -> None:
    torch.manual_seed(0)
    model = randomise(_mixed_net())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    units, _ = find_units(model, x)
    assert [(u.name, u.downsample) for u in units] == [("1", False), ("2", True)]
    kinds = {u.name: u.kind for u in find_units(model, x, "1,2,3,4,5,6")[0]}
    assert kinds == {
        "1": "residual",
        "2": "residual",
        "3": "layer",
        "4": "layer",
        "5": "layer",
        "6": "layer",
    }
    with torch.no_grad():
        short = model[2].shortcut(model[1](model[0](x)))
        assert torch.equal(units[1].skip(model[1](model[0](x))), F.relu(short))


def test_identity_fns_teach_a_block_per_study_not_globally() -> None:
    torch.manual_seed(0)
    model = randomise(_mixed_net())
    x = torch.randn(2, 3, 16, 16)
    fns = {Gated: lambda m, v: v}
    (gated,), _ = find_units(model, x, "6", fns)
    assert gated.residual and torch.equal(gated.skip(x[:, :1]), x[:, :1])
    (again,), _ = find_units(model, x, "6")  # nothing was registered anywhere
    assert again.kind == "layer"
    data = (torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)))
    res = netlens.ablate(model, data, layers="6", identity_fns={"6": lambda m, v: v}, resamples=50)
    assert res.rows[0]["kind"] == "residual"


def test_normalisation_layers_are_not_default_units() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(8),
        nn.Linear(8, 3),
    ).eval()
    units, _ = find_units(model, torch.randn(1, 3, 8, 8))
    assert [u.name for u in units] == ["0", "3", "5"]
    assert all(not is_norm(model.get_submodule(u.name)) for u in units)
    assert np.all([u.kind == "layer" for u in units])


class _SizedBlock(nn.Module):
    """A PVT/CoaT-like residual block: called with its token grid size besides the tokens."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        y = self.fc(self.norm(x)).reshape(x.shape[0], h, w, -1)
        return x + torch.tanh(y).flatten(1, 2)


class _Tokens(nn.Module):
    """Blocks in a ModuleList the model calls one by one, each with ``size``."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.blocks = nn.ModuleList([_SizedBlock(d) for _ in range(3)])
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        size = (t.shape[2], t.shape[3])
        t = t.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t = blk(t, size)
        return self.head(t.mean(1))


def test_blocks_with_size_arguments_in_a_module_list_are_residual() -> None:
    """Regression: blocks taking ``(x, size)`` were not traced, and blocks of a ModuleList the
    model iterates were never visited; identity ablation equals the block's input, by hand."""
    torch.manual_seed(0)
    model = _Tokens().eval()
    x = torch.randn(4, 3, 16, 16)
    units, _ = find_units(model, x)
    assert [(u.name, u.kind) for u in units] == [(f"blocks.{i}", "residual") for i in range(3)]
    res = netlens.load(model, size=16).ablate(
        x, layers="blocks.1", mode="identity", metric="agreement", progress=False
    )
    ref = copy.deepcopy(model)
    ref.blocks[1] = _Pass()
    with torch.no_grad():
        agree = (ref(x).argmax(1) == model(x).argmax(1)).double().mean().item()
    assert res.rows[0]["value"] == pytest.approx(agree)


class _Pass(nn.Module):
    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x


class _Pairs(nn.Module):
    """A stage that returns ``(tokens, size)`` (MViTv2) between two plain layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = _PairStage()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, _ = self.stage(self.conv(x))
        return self.head(t.mean((2, 3)))


class _PairStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return x + self.conv(x), (x.shape[2], x.shape[3])


class _SizeFirstStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
        return (x.shape[2], x.shape[3]), x + self.conv(x)


class _SizeFirst(_Pairs):
    """A stage returning ``(size, tokens)``: no tensor first, nothing to replace."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = _SizeFirstStage()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, t = self.stage(self.conv(x))
        return self.head(t.mean((2, 3)))


def test_units_returning_tuples_are_ablated_in_element_zero_or_refused_in_one_line() -> None:
    """``(tokens, size)`` (MViTv2, Hugging Face Swin's ``(hidden, None)``) is switched off in
    its tensor; a tuple that does not start with one is left out, or refused in one line."""
    from netlens.errors import AnalyzerError

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    lens = netlens.load(_Pairs().eval(), size=8)
    res = lens.ablate(x, mode="zero", metric="agreement", progress=False)
    assert [r["unit"] for r in res.rows] == ["stage"]  # a residual stage, by its element 0
    lens = netlens.load(_SizeFirst().eval(), size=8)
    res = lens.ablate(x, mode="zero", metric="agreement", progress=False)
    assert [r["unit"] for r in res.rows] == ["conv"]
    for mode in ("zero", "identity"):
        with pytest.raises(AnalyzerError, match="'stage' returns neither a tensor") as err:
            lens.ablate(x, layers="stage", mode=mode, metric="agreement", progress=False)
        assert "\n" not in str(err.value)


def test_a_model_that_fails_on_the_data_is_one_line() -> None:
    from netlens.analyzers.ablation.survey import survey
    from netlens.errors import AnalyzerError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(AnalyzerError, match=r"fails on input \(1, 3, 16, 16\)") as err:
        survey(model, torch.zeros(1, 3, 16, 16))
    assert "\n" not in str(err.value)
    assert not model._forward_hooks and not model[0]._forward_pre_hooks


class Autocast(nn.Module):
    """A model that runs its network under ``torch.autocast`` inside its own forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


def test_blocks_run_under_the_models_own_autocast_are_ablated() -> None:
    """The blocks with a projection shortcut (``layer2.0`` ...) were re-run outside the
    autocast they ran under: bfloat16 inputs met float32 weights, and they were left out as
    "identity cannot skip a layer that changes the shape"."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    x, y = torch.randn(6, 3, 64, 64), torch.randint(0, 4, (6,))
    plain = netlens.ablate(net, (x, y), metric="prob", resamples=10)
    cast = netlens.ablate(Autocast(net).eval(), (x, y), metric="prob", resamples=10)
    keys = [r["key"].removeprefix("net.") for r in cast.rows]
    assert keys == [r["key"] for r in plain.rows] and "layer2.0" in keys
    for a, b in zip(plain.rows, cast.rows, strict=True):
        assert b["value"] == pytest.approx(a["value"], abs=0.05)  # bfloat16's rounding
