"""Analyzers on models transformed by training or deployment code: a stage whose blocks run one
by one (timm's gradient checkpointing), a conv fused by torch.ao's fuse_modules, a conv with its
own forward carrying the user's hooks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv(x))


class _Checkpointed(nn.Module):
    """``stage``'s blocks run one by one, as timm's checkpoint_seq does: ``stage`` never runs.
    ``aux`` (a head for training) never runs at all."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = nn.Sequential(_Block(), _Block())
        self.aux = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.stage:
            x = block(x)
        return self.fc(x.mean((2, 3)))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 12, 12, generator=g), torch.arange(4) % 3


@pytest.mark.parametrize("analyzer", ["stats", "ablate"])
def test_a_stage_run_block_by_block_is_refused_naming_a_block(analyzer: str) -> None:
    lens = netlens.Lens(_Checkpointed().eval())
    data = _data()
    with pytest.raises(NetlensError) as err:
        if analyzer == "stats":
            lens.run("stats", data, layers=["stage"])
        else:
            lens.ablate(data, layers=["stage"], metric="prob", resamples=10)
    msg = str(err.value)
    assert "gradient checkpointing" in msg and "'stage.1'" in msg and "\n" not in msg


def test_ablate_a_container_none_of_whose_blocks_ran_gets_no_checkpointing_hint() -> None:
    lens = netlens.Lens(_Checkpointed().eval())
    with pytest.raises(NetlensError, match="did not run") as err:
        lens.ablate(_data(), layers=["aux"], metric="prob", resamples=10)
    assert "checkpointing" not in str(err.value)


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act1(self.bn1(self.conv1(x))).mean((2, 3)))


def test_kernels_of_a_fused_conv_shows_its_conv() -> None:
    torch.manual_seed(0)
    model = _Stem().eval()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    fused = torch.ao.quantization.fuse_modules(model, [["conv1", "bn1", "act1"]])
    lens = netlens.load(fused, input_size=(3, 16, 16))
    r = lens.kernels("conv1")
    assert r.meta["layer"] == "conv1.0" and r.meta["type"] == "Conv2d"
    torch.testing.assert_close(torch.from_numpy(r.arrays["weight"]), fused.conv1[0].weight.data)
    assert r.meta["view"] == lens.kernels().meta["view"] == "rgb"


class _OwnForwardConv(nn.Conv2d):
    """Convolves with weights its forward derives in a way netlens cannot know."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        w = torch.tanh(self.weight) * 3
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _own_forward_net() -> nn.Module:
    conv = _OwnForwardConv(3, 8, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_kernels_does_not_fire_the_users_hooks_on_its_test_input() -> None:
    model = _own_forward_net().eval()
    seen: list[tuple[int, ...]] = []
    model[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    model[0].register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    _OwnForwardConv.calls = 0
    r = netlens.load(model, input_size=(3, 16, 16)).kernels("0")
    assert all(s[-2:] == (16, 16) for s in seen), seen  # the model's own input only
    assert _OwnForwardConv.calls - len(seen) // 2 == 1  # its test input: once
    assert any("own forward" in w for w in r.meta["warnings"])


def test_a_hook_that_refuses_the_test_input_does_not_hide_the_warning() -> None:
    model = _own_forward_net().eval()

    def strict(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if args[0].shape[-1] != 16:
            raise ValueError("this layer sees 16×16 maps only")

    model[0].register_forward_pre_hook(strict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = netlens.load(model, input_size=(3, 16, 16)).kernels("0")
    assert any("own forward" in w for w in r.meta.get("warnings", []))
