"""Probes on a module registered under two names, and probes nested on the same layer.

References are plain forward hooks (``out.detach().clone()``, a tensor hook for gradients).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class _Shared(nn.Module):
    """One conv stored as enc1 and enc2, one ReLU instance as r1 and r2: each runs twice."""

    def __init__(self) -> None:
        super().__init__()
        block = nn.Conv2d(3, 3, 3, padding=1)
        relu = nn.ReLU()
        self.enc1, self.enc2 = block, block
        self.r1, self.r2 = relu, relu
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.r2(self.enc2(self.r1(self.enc1(x)) - 0.1))
        return self.head(x.mean((2, 3)))


def _reference(model: nn.Module, module: nn.Module, x: torch.Tensor, score: int = 1):
    """Every call's output and gradient of d(logits[:, score].sum()), from plain hooks."""
    outs: list[torch.Tensor] = []
    grads: dict[int, torch.Tensor] = {}

    def hook(mod: nn.Module, inputs: object, out: torch.Tensor) -> None:
        k = len(outs)
        outs.append(out.detach().clone())
        out.register_hook(lambda g: grads.__setitem__(k, g.detach().clone()))

    handle = module.register_forward_hook(hook)
    try:
        y = model(x.clone().requires_grad_(True))
        y[:, score].sum().backward(inputs=list(model.parameters()))
    finally:
        handle.remove()
    return outs, [grads[k] for k in range(len(outs))]


@pytest.fixture
def shared():
    torch.manual_seed(0)
    return _Shared().eval(), torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize("sel,k", [("enc2@1", 1), ("enc2@0", 0), ("enc1@1", 1), ("r2@1", 1)])
def test_alias_call_readable_under_given_name(shared, sel, k):
    model, x = shared
    outs, grads = _reference(model, getattr(model, sel[:-2]), x)
    with netlens.probe(model, [sel], grads=True) as p:
        p.compute_grads(model(x)[:, 1].sum())
    assert list(p) == [sel]
    torch.testing.assert_close(p[sel].output, outs[k], rtol=0, atol=0)
    torch.testing.assert_close(p[sel].grad, grads[k])


def test_alias_both_names_count_calls_of_the_module(shared):
    model, x = shared
    outs, _ = _reference(model, model.enc1, x)
    with netlens.probe(model, ["enc1@0", "enc2@1", "enc2"]) as p:
        model(x)
    assert list(p) == ["enc1@0", "enc2@1", "enc2"]
    assert torch.equal(p["enc1@0"].output, outs[0])
    assert torch.equal(p["enc2@1"].output, outs[1])
    assert torch.equal(p["enc1@1"].output, outs[1])  # the same call under its other name
    assert all(torch.equal(a, b) for a, b in zip(p["enc2"].outputs, outs, strict=True))


def test_alias_call_errors_say_calls_are_per_module(shared):
    model, x = shared
    with netlens.probe(model, ["enc2@2", "r2"]) as p:
        model(x)
    with pytest.raises(NetlensError, match=r"enc2@0.*also named 'enc1'.*counted per module"):
        p["enc2@2"].output  # noqa: B018
    with pytest.raises(NetlensError, match=r"r2@1.*also named 'r1'.*counted per module"):
        p["r2"].output  # noqa: B018


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize("outer_grads,inner_grads", [(False, True), (True, False), (True, True)])
def test_nested_probes_on_one_layer(outer_grads, inner_grads):
    """The outer probe's first forward runs inside the inner one; later forwards plain."""
    model = _net()
    xs = [torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in (1, 2, 3)]
    refs = [_reference(model, model[0], x) for x in xs]
    with netlens.probe(model, ["0", "2"], grads=outer_grads) as outer:
        with netlens.probe(model, ["0"], grads=inner_grads) as inner:
            y = model(xs[0])
            if inner_grads:
                inner.compute_grads(y[:, 1].sum(), retain_graph=outer_grads)
            if outer_grads:
                outer.compute_grads(y[:, 1].sum())
        assert torch.equal(inner["0"].output, refs[0][0][0])
        if inner_grads:
            torch.testing.assert_close(inner["0"].grad, refs[0][1][0])
        if outer_grads:
            torch.testing.assert_close(outer["0"].grad, refs[0][1][0])
        if outer_grads:
            outer.clear()  # (its graph is spent)
        for x in xs[1:]:
            y = model(x)  # grad on, as a user runs it: the probe cannot re-run this forward
    kept = outer["0"].outputs
    want = [r[0][0] for r in refs[1:]] if outer_grads else [r[0][0] for r in refs]
    assert len(kept) == len(want)
    assert all(torch.equal(a, b) for a, b in zip(kept, want, strict=True))
    assert len(outer["2"].outputs) == len(want)


def test_module_names_with_at_are_names_not_calls() -> None:
    """onnx2torch names its modules ``Conv@0``, ``Div@17``: such a name is the module's, not
    call 17 of a module ``Div`` (probe, then a CAM at it, against plain hooks)."""
    model = nn.Sequential()
    model.add_module("Conv@0", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("Relu@17", nn.ReLU())
    model.add_module("Pool@2", nn.AdaptiveAvgPool2d(1))
    model.add_module("Flatten@3", nn.Flatten())
    model.add_module("Gemm@4", nn.Linear(4, 2))
    model.eval()
    x = torch.rand(2, 3, 16, 16)
    outs, _ = _reference(model, model.get_submodule("Relu@17"), x)
    with netlens.probe(model, ["Relu@17"]) as p:
        model(x)
    assert torch.equal(p["Relu@17"].output, outs[0])
    lens = netlens.Lens(model)
    assert lens.cam(x, layer="Relu@17").table[0]["layer"] == "Relu@17"
