"""Many no-grad passes: every way of running them gives the model's outputs, the model untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from test_cam_hooks import assert_unchanged, net, snapshot
from torch import nn

import netlens
from netlens.analyzers import inference
from netlens.analyzers.inference import InferencePasses


class DataDependent(nn.Module):
    """A forward with Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if float(x.sum()) > -1e9 else -self.body(x)


class Jittery(nn.Module):
    """Scales its output by a fresh Python random number: a traced copy freezes the number."""

    def __init__(self) -> None:
        super().__init__()
        self.body = net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * (1 + random.random())


def first(out: object) -> torch.Tensor:
    return out  # type: ignore[return-value]


def inputs(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize(("make", "folded"), [(net, True), (DataDependent, False)])
def test_a_folded_copy_is_made_when_the_model_traces(make, folded) -> None:  # noqa: ANN001
    model = make().eval()
    before = snapshot(model)
    x = inputs(40)
    passes = InferencePasses(model, first, min_passes=8)
    got = passes.map(lambda a, b: x[a:b], len(x), 6)
    assert ("folded" in passes.engines) == folded
    with torch.no_grad():
        np.testing.assert_allclose(got.numpy(), model(x).numpy(), atol=1e-5)
    assert_unchanged(model, before)


def test_a_copy_that_computes_something_else_is_dropped() -> None:
    model = Jittery().eval()
    passes = InferencePasses(model, first, min_passes=2)
    passes.map(lambda a, b: inputs(4)[a:b], 4, 2)
    assert "folded" not in passes.engines  # fx baked a number in; the check saw it


def test_every_way_is_raced_and_gives_the_models_outputs(one_thread) -> None:  # noqa: ANN001
    torch.set_num_threads(2)  # restored by the fixture
    model = net().eval()
    before = snapshot(model)
    x = inputs(60)
    passes = InferencePasses(model, first, min_passes=8, repay=0)  # oneDNN always worth a try
    got = passes.map(lambda a, b: x[a:b], len(x), 6)
    assert torch.get_num_threads() == 2
    raced = {("folded", "split"), ("folded", "whole")}
    mode = min(raced, key=passes.times.__getitem__)[1]
    ways = raced | {("onednn", mode)}  # oneDNN's copy runs in the mode that won
    assert set(passes.times) == ways and passes.best in ways
    with torch.no_grad():
        np.testing.assert_allclose(got.numpy(), model(x).numpy(), atol=1e-5)
    again = passes.map(lambda a, b: x[a:b], 7, 3)  # the winner is kept: no second race
    assert set(passes.times) == ways
    np.testing.assert_allclose(again.numpy(), got[:7].numpy(), atol=1e-5)
    assert_unchanged(model, before)


def test_few_passes_run_on_the_model_itself() -> None:
    model = net().eval()
    passes = InferencePasses(model, first)
    passes.map(lambda a, b: inputs(8)[a:b], 8, 4)
    assert list(passes.engines) == ["model"] and passes.best is None


def test_scorecam_through_every_way_equals_the_plain_algorithm(monkeypatch) -> None:  # noqa: ANN001
    from test_cam_exact import plain_scorecam
    from test_cam_reference import randomized_resnet18

    monkeypatch.setattr(inference, "MIN_PASSES", 16)
    monkeypatch.setattr(inference, "REPAY", 0)
    tried: list[InferencePasses] = []
    run = InferencePasses._run
    monkeypatch.setattr(
        InferencePasses, "_run", lambda self, *a: tried.append(self) or run(self, *a)
    )
    model = randomized_resnet18()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got = netlens.cam(model, x, method="scorecam", layer="layer4", target=2, batch_size=40)
    assert {e for e, _ in tried[0].times} == {"folded", "onednn"}
    ref = plain_scorecam(model, x, model.layer4, 2)
    assert ref.std() > 0.1
    np.testing.assert_allclose(got.heatmaps[0], ref, atol=1e-5)
