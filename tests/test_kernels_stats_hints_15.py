"""kernels on a conv whose forward convolves with weights its forward pre-hook computes, and on
one whose forward fails on the test input; stats on a container that never runs (a training-only
head, an unused ModuleList): no advice to pick one of its blocks, which do not run either."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class _HookStdConv(nn.Conv2d):
    """Convolves with ``w_eff``, which its forward pre-hook sets (the filters standardised)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w_eff, self.bias, self.stride, self.padding, self.dilation)


def _standardise(mod: nn.Module, _args: tuple[torch.Tensor, ...]) -> None:
    w = mod.weight
    mean, var = w.mean((1, 2, 3), keepdim=True), w.var((1, 2, 3), unbiased=False, keepdim=True)
    mod.w_eff = (w - mean) / torch.sqrt(var + 1e-5)


def _prehook_net() -> nn.Module:
    torch.manual_seed(0)
    conv = _HookStdConv(3, 8, 3, padding=1)
    conv.register_forward_pre_hook(_standardise)
    with torch.no_grad():
        conv.weight.mul_(5).add_(2)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_kernels_runs_the_pre_hook_that_computes_the_weights_convolved_with() -> None:
    model = _prehook_net().eval()
    seen: list[tuple[int, ...]] = []
    model[0].register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = netlens.load(model).kernels("0")  # no forward before: w_eff is not set yet
    assert "standardised per filter" in str(r.meta.get("weight_used")), r.meta
    w = model[0].weight.detach()
    mean, var = w.mean((1, 2, 3), keepdim=True), w.var((1, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(
        torch.from_numpy(r.arrays["weight"]), (w - mean) / torch.sqrt(var + 1e-5)
    )
    assert all(s[-2:] != (8, 8) for s in seen), seen  # forward hooks: not on the test input


class _NeedsState(nn.Conv2d):
    """A forward that fails on any input netlens can give it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.missing_weight, self.bias, self.stride, self.padding)


def test_kernels_warns_when_the_layers_own_forward_fails_on_the_test_input() -> None:
    conv = _NeedsState(3, 8, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = netlens.load(model.eval(), input_size=(3, 16, 16)).kernels("0")
    told = [w for w in r.meta.get("warnings", []) if ".weight" in w]
    assert told and "\n" not in told[0], r.meta


class _AuxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.unused = nn.ModuleList([nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)])
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        if self.training:
            self.aux(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("layer", ["aux", "unused"])
def test_stats_on_a_container_none_of_whose_blocks_ran_names_no_block(layer: str) -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.rand(4, 3, 16, 16, generator=g), torch.arange(4)
    with pytest.raises(NetlensError, match="did not run") as err:
        netlens.load(_AuxNet().eval()).run("stats", data, layers=[layer])
    msg = str(err.value)
    assert "checkpointing" not in msg and f"'{layer}." not in msg and "\n" not in msg
