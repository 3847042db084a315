"""kernels shows the weights a layer convolves with, not its stored ``.weight``.

References are independent of netlens: the weight tensor ``F.conv2d`` receives when the layer
itself runs (caught with a TorchFunctionMode), on the module or on a copy of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.overrides import TorchFunctionMode

import netlens
from netlens.errors import AnalyzerError
from netlens.images import Preprocess
from netlens.lens import Lens

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings(
    "ignore:model records no preprocessing", "ignore:.*weight_norm.*is deprecated:FutureWarning"
)


class _ConvSpy(TorchFunctionMode):
    """Records the weight of every conv2d call made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d):
            w = kwargs.get("weight", args[1] if len(args) > 1 else None)
            self.weights.append(w.detach().clone())
        return func(*args, **kwargs)


def _used(conv: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The weight ``conv`` convolves ``x`` with, caught as it runs."""
    spy = _ConvSpy()
    with torch.no_grad(), spy:
        conv(x)
    assert len(spy.weights) == 1
    return spy.weights[0].numpy()


def _dead(w: np.ndarray, tol: float = 1e-3) -> list[int]:
    norms = np.sqrt((w.reshape(len(w), -1).astype(np.float64) ** 2).sum(1))
    return np.nonzero(norms <= tol * norms.max())[0].tolist()


def _net(conv: nn.Module, out: int) -> nn.Module:
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out, 2))


@pytest.mark.parametrize(
    "kind", ["StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"]
)
def test_weight_standardised_convs_show_the_standardised_filters(kind: str) -> None:
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    conv = getattr(layers, kind)(3, 6, 3)
    with torch.no_grad():
        conv.weight[0].mul_(1e-2)  # raw scale shrunk: the filter in use is the same
        conv.weight[3].mul_(50.0)  # raw scale grown: not the strongest filter in use
        if hasattr(conv, "gain"):
            conv.gain[1] = 0.0  # really dead
            conv.gain[2] = 3.0  # really the strongest
    model = _net(conv, 6).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 9, 9)
    used = _used(conv, x)
    r = Lens(model, Preprocess(size=(9, 9))).kernels("0", sort=True)
    shown = r.arrays["weight"]
    np.testing.assert_allclose(shown, used, rtol=1e-5, atol=1e-6)
    assert r.meta["near_zero"] == _dead(used) == ([1] if hasattr(conv, "gain") else [])
    norms = np.linalg.norm(used.reshape(6, -1), axis=1)
    np.testing.assert_allclose(r.arrays["norm"], norms, rtol=1e-5)
    first = r.arrays["order"][0]  # sorted by the norms in use (StdConv2d's are all but equal)
    assert norms[first] == pytest.approx(norms.max(), rel=1e-6)
    np.testing.assert_allclose(r.arrays["tiles"][0], used[first].transpose(1, 2, 0), rtol=1e-5)
    assert "standardised" in r.meta["weight_used"] and "standardised" in r.headline()
    figure = next(iter(r.figures().values()))
    titles = [t.get_text() for t in figure.texts] + [a.get_title() for a in figure.axes]
    assert any("as used: standardised" in t for t in titles)  # the picture says so too
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _pruned_model() -> nn.Module:
    """A structurally pruned first conv rebuilt from its state dict: ``.weight`` is stale."""

    def make() -> nn.Module:
        m = _net(nn.Conv2d(3, 8, 3), 8)
        prune.identity(m[0], "weight")
        return m

    torch.manual_seed(0)
    src = make()
    prune.remove(src[0], "weight")
    prune.ln_structured(src[0], "weight", amount=0.25, n=2, dim=0)
    m = make()
    m.load_state_dict(src.state_dict())
    return m.eval()


def _weight_normed_model(kind: str) -> nn.Module:
    """A first conv under weight_norm/spectral_norm rebuilt from a state dict (classic hooks:
    ``.weight`` stale until a forward; parametrizations: computed on access)."""
    wrap = {
        "weight_norm": nn.utils.weight_norm,
        "spectral_norm": nn.utils.spectral_norm,
        "parametrized": nn.utils.parametrizations.weight_norm,
    }[kind]

    def make() -> nn.Module:
        torch.manual_seed(0)
        m = _net(nn.Conv2d(3, 8, 5, padding=2), 8)
        m[0] = wrap(m[0])
        return m

    trained = make()
    with torch.no_grad():
        for name, p in trained[0].named_parameters():
            p.add_(torch.randn_like(p) * (1 + p.abs().mean()))
            if name.endswith("_g") or name.endswith("original0"):
                p.mul_(torch.linspace(0.01, 3, 8).view(8, 1, 1, 1))
    m = make()
    m.load_state_dict(trained.state_dict())
    return m.eval()


@pytest.mark.parametrize("kind", ["pruned", "weight_norm", "spectral_norm", "parametrized"])
def test_hook_computed_weights_are_current_without_a_forward(kind: str) -> None:
    build = _pruned_model if kind == "pruned" else lambda: _weight_normed_model(kind)
    model = build()
    stale = model[0].weight.detach().clone()
    used = _used(build()[0], torch.randn(1, 3, 8, 8))  # a twin's hook refreshes the twin
    lens = netlens.load(model, classes="a,b")  # no input size: no forward runs anywhere
    r = lens.kernels("0")
    np.testing.assert_allclose(r.arrays["weight"], used, rtol=1e-5, atol=1e-7)
    assert r.meta["near_zero"] == _dead(used)
    if kind == "pruned":
        assert r.meta["near_zero"] == [4, 7]
    if kind != "parametrized":
        assert np.abs(stale.numpy() - used).max() > 1e-3  # the case is real
        assert r.meta["weight_used"]
    assert torch.equal(model[0].weight, stale)  # the user's module is left as it was


def test_a_conditional_conv_is_refused_in_one_line() -> None:
    layers = pytest.importorskip("timm.layers")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.route = nn.Linear(8, 4)
            self.cc = layers.CondConv2d(8, 8, 5, groups=8, num_experts=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            return self.cc(x, torch.sigmoid(self.route(x.mean((2, 3)))))

    lens = Lens(Net().eval(), Preprocess(size=(16, 16)))
    with pytest.raises(AnalyzerError) as err:
        lens.kernels("cc")
    text = str(err.value)
    assert "\n" not in text and "conditional conv" in text and "4 experts" in text
    assert lens.kernels().meta["layer"] == "stem"  # its plain convs are still shown


class _TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_a_model_of_unknown_input_size_shows_its_weights(order: str) -> None:
    model = _TwoLayer().eval()
    lens = netlens.load(model, classes="a,b", channel_order=order)
    w = model.stem.weight.detach().numpy()
    for layer in (None, "stem"):
        r = lens.kernels(layer)
        assert r.meta["layer"] == "stem" and r.meta["view"] == "rgb"
        want = w[:, ::-1] if order == "bgr" else w
        np.testing.assert_array_equal(r.arrays["tiles"], want.transpose(0, 2, 3, 1))
    head = lens.kernels("head")
    assert head.meta["view"] == "matrix"
    np.testing.assert_array_equal(head.arrays["matrix"], model.head.weight.detach().numpy())
