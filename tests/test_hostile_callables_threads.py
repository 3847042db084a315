"""Hostile target functions and threads: a bool or NaN score, a target that runs the model
again, a forward that hands its branches to a thread pool (Score-/Ablation-CAM's inference-mode
passes), and a probe whose model runs in another thread."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError, NetlensWarning, TargetError
from netlens.metrics.perturb import row_probs

pytestmark = [pytest.mark.usefixtures("one_thread")]


class Det(nn.Module):
    """A detector's raw output: N × A × 6 boxes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=4, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def det() -> tuple[nn.Module, torch.Tensor]:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return Det().eval(), x


def _heat(model: nn.Module, x: torch.Tensor, method: str, target) -> torch.Tensor:
    r = netlens.load(model).cam(x, layer="body.2", method=method, target=target)
    return torch.as_tensor(r.arrays["heatmaps"]).float()


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_bool_and_int_scores_are_cast_to_float(det, method: str) -> None:
    model, x = det

    def flag(o: torch.Tensor) -> torch.Tensor:
        return o[..., 4].amax(1) > 0.05

    def count(o: torch.Tensor) -> torch.Tensor:
        return (o[..., 4] > 0.05).sum(1)

    for fn in (flag, count):
        ref = _heat(model, x, method, lambda o, fn=fn: fn(o).float())
        assert torch.equal(_heat(model, x, method, fn), ref)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused(det, method: str, bad: float) -> None:
    model, x = det

    def empty_max(o: torch.Tensor) -> torch.Tensor:
        return o[..., 4].amax(1) + bad

    with pytest.raises(TargetError, match=r"'empty_max' returned NaN or infinite.*2 image") as e:
        _heat(model, x, method, empty_max)
    assert "\n" not in str(e.value)


def test_target_that_runs_the_model_is_refused(det) -> None:
    model, x = det

    def rescore(o: torch.Tensor) -> torch.Tensor:
        return model(x)[..., 4].amax(1) + o[..., 4].amax(1)

    with pytest.raises(TargetError, match="'rescore' ran the model again") as e:
        _heat(model, x, "gradcam", rescore)
    assert "clear()" not in str(e.value)


# -- a forward that runs its branches on a thread pool ---------------------------------------
POOL = cf.ThreadPoolExecutor(2)


class Branches(nn.Module):
    def __init__(self, threaded: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.threaded = threaded
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 5, padding=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        if self.threaded:
            fa, fb = POOL.submit(self.a, f).result(), POOL.submit(self.b, f).result()
        else:
            fa, fb = self.a(f), self.b(f)
        return self.head((fa + fb).relu().mean((2, 3)))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_threaded_forward_gives_the_plain_models_map(method: str) -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    threaded, plain = Branches(True).eval(), Branches(False).eval()
    for _ in range(2):  # the second analysis: the remembered no_grad passes
        got = netlens.load(threaded).cam(x, layer="stem", method=method, target=2)
        ref = netlens.load(plain).cam(x, layer="stem", method=method, target=2)
        np.testing.assert_allclose(ref.arrays["heatmaps"], got.arrays["heatmaps"], atol=1e-5)


def test_threaded_forward_perturbation_probabilities() -> None:
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = np.array([0, 1, 2, 3])
    got = row_probs(Branches(True).eval(), lambda a, b: x[a:b], targets, batch_size=2)
    with torch.no_grad():
        ref = torch.softmax(Branches(False).eval()(x), 1)[torch.arange(4), targets].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5)


# -- a probe opened in one thread, the model run in another -----------------------------------
class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(1)


@pytest.mark.parametrize("how", ["executor", "asyncio"])
def test_probe_says_the_model_ran_in_another_thread(how: str) -> None:
    m, x = Small().eval(), torch.rand(1, 3, 16, 16)
    with netlens.probe(m, "conv") as p:
        if how == "executor":
            with cf.ThreadPoolExecutor(1) as ex:
                ex.submit(m, x).result()
        else:
            asyncio.run(asyncio.to_thread(m, x))
        with pytest.raises(NetlensError, match="ran only in another thread") as e:
            _ = p["conv"].output
        assert "thread that opened the probe" in str(e.value) and "\n" not in str(e.value)
        with pytest.warns(NetlensWarning, match="ran only in another thread"):
            assert p["conv"].outputs == []
        m(x)  # now in this thread: captured as usual, no word about threads
        assert torch.equal(p["conv"].output, m.conv(x))
        p.clear()
        with pytest.raises(NetlensError, match="did not run"):
            _ = p["conv"].output
