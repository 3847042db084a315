"""kernels: weight-standardised convs from outside timm, parallel convs reading the image, and
filters holding NaN/Inf weights.

References are independent of netlens: the weight ``F.conv2d`` receives when the layer runs
(caught with a TorchFunctionMode), the convs whose forward input is the model's input (caught
with pre-hooks), and norms computed here with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import netlens
from netlens.analyzers.kernels import filter_stats

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:model records no preprocessing"),
]


class _ConvSpy(TorchFunctionMode):
    """Records the weight of every conv2d call made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            self.weights.append(args[1].detach().clone())
        return func(*args, **kwargs)


def _used_weight(conv: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad(), _ConvSpy() as spy:
        conv(x)
    assert len(spy.weights) == 1
    return spy.weights[0].numpy()


class _BigTransferStdConv(nn.Conv2d):
    """google-research/big_transfer's StdConv2d, verbatim forward."""

    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _OddConv(nn.Conv2d):
    """Convolves with weights its forward derives in a way netlens cannot know."""

    def forward(self, x):
        w = torch.tanh(self.weight) * 3
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _LoggingConv(nn.Conv2d):
    """Overrides forward but convolves with its stored weight."""

    def forward(self, x):
        return super().forward(x)


class _Net(nn.Module):
    def __init__(self, conv: nn.Module, out: int) -> None:
        super().__init__()
        self.root, self.head = conv, nn.Linear(out, 4)

    def forward(self, x):
        return self.head(torch.relu(self.root(x)).mean((2, 3)))


def _shrunk(conv: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    nn.init.normal_(conv.weight)
    with torch.no_grad():
        conv.weight[:4] *= 5e-4  # weight decay on scale-invariant filters
        conv.weight[4:] += 0.3  # an offset the standardisation removes
    return conv


def test_transformers_weight_standardized_conv_shows_standardised_filters():
    modeling_bit = pytest.importorskip("transformers.models.bit.modeling_bit")
    conv = _shrunk(modeling_bit.WeightStandardizedConv2d(3, 16, 7, stride=2, eps=1e-8))
    r = netlens.load(_Net(conv, 16).eval(), input_size=(3, 32, 32)).kernels()
    used = _used_weight(conv, torch.randn(1, 3, 32, 32))
    np.testing.assert_allclose(r.arrays["weight"], used, atol=1e-4)
    assert r.meta["near_zero"] == []
    assert "standardised" in r.meta["weight_used"]
    np.testing.assert_allclose(
        r.arrays["norm"], np.linalg.norm(used.reshape(16, -1), axis=1), rtol=1e-4
    )


def test_copied_big_transfer_std_conv_recognised_by_behaviour():
    conv = _shrunk(_BigTransferStdConv(3, 16, 7, 2, 3, bias=False))
    r = netlens.load(_Net(conv, 16).eval(), input_size=(3, 32, 32)).kernels()
    used = _used_weight(conv, torch.randn(1, 3, 32, 32))
    np.testing.assert_allclose(r.arrays["weight"], used, atol=1e-4)
    assert r.meta["near_zero"] == []
    assert "standardised" in r.meta["weight_used"] and "checked" in r.meta["weight_used"]


def test_unknown_forward_weights_are_named_in_a_warning():
    conv = _OddConv(3, 8, 3, padding=1)
    r = netlens.load(_Net(conv, 8).eval(), input_size=(3, 32, 32)).kernels()
    assert r.meta["weight_used"] is None
    np.testing.assert_array_equal(r.arrays["weight"], conv.weight.detach().numpy())
    assert any("own forward" in w and "_OddConv" in w for w in r.meta["warnings"])


def test_forward_override_that_uses_the_stored_weight_says_nothing():
    conv = _LoggingConv(3, 8, 3, padding=1)
    r = netlens.load(_Net(conv, 8).eval(), input_size=(3, 32, 32)).kernels()
    assert r.meta["weight_used"] is None and not r.meta.get("warnings")


class _TwoBranchStem(nn.Module):
    """RepVGG/MobileOne-like: a 1×1 and a 3×3 conv both read the image; the 1×1 runs first."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_1x1 = nn.Conv2d(3, 8, 1, stride=2)
        self.branch_kxk = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.deep = nn.Conv2d(8, 3, 3, padding=1)
        self.deeper = nn.Conv2d(3, 8, 3, padding=1)  # 3 input channels, but feature maps
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.branch_1x1(x) + self.branch_kxk(x))
        return self.head(self.deeper(torch.relu(self.deep(y))).mean((2, 3)))


def test_auto_picks_the_largest_kernel_reading_the_image_and_each_reader_is_rgb():
    model = _TwoBranchStem().eval()
    x = torch.randn(1, 3, 32, 32)
    readers: list[str] = []
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, a, n=n: readers.append(n) if torch.equal(a[0], x) else None
        )
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert readers == ["branch_1x1", "branch_kxk"]
    lens = netlens.load(model, input_size=(3, 32, 32))
    auto = lens.kernels()
    assert auto.meta["layer"] == "branch_kxk" and auto.meta["view"] == "rgb"
    assert lens.kernels("branch_1x1").meta["view"] == "matrix"
    assert lens.kernels("deeper").meta["reduce"] == "mean"  # reads feature maps, not colours


def _nan_weights() -> np.ndarray:
    w = np.random.default_rng(0).normal(size=(10, 3, 3, 3)).astype(np.float32)
    w[[3, 7]] = 0
    return w


def test_filter_stats_limit_ignores_non_finite_filters():
    w = _nan_weights()
    w[2, 0, 1, 1] = np.nan
    rows = filter_stats(w)
    assert [r["filter"] for r in rows if r["near_zero"]] == [3, 7]
    assert [r["filter"] for r in rows if not r["finite"]] == [2]
    w = _nan_weights()
    w[4, 1, 0, 0] = np.inf
    rows = filter_stats(w)
    assert [r["filter"] for r in rows if r["near_zero"]] == [3, 7]
    finite = np.delete(np.arange(10), 4)
    ref = np.linalg.norm(w[finite].reshape(len(finite), -1).astype(np.float64), axis=1)
    np.testing.assert_allclose([rows[i]["norm"] for i in finite], ref, rtol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_kernels_flags_non_finite_filters(bad):
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(_nan_weights()))
        model[0].weight[2, 0, 1, 1] = bad
    lens = netlens.load(model.eval(), input_size=(3, 16, 16))
    r = lens.kernels(sort=True)
    assert r.meta["near_zero"] == [3, 7]
    assert r.meta["non_finite"] == [2]
    assert any("NaN or infinite" in w for w in r.meta["warnings"])
    assert int(r.arrays["order"][0]) == 2  # sorted first, whatever its norm is
    norms = r.arrays["norm"][r.arrays["order"][1:]]
    assert np.all(np.diff(norms) <= 0)  # then the finite ones, largest first
    fig = next(iter(r.figures().values()))
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "2 nan" in labels and "3 dead" in labels and "7 dead" in labels
