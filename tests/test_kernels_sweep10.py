"""kernels on LoRA-adapted layers, dead tiles in every view, 3-input deeper convs; the layer table
on quantized layers.

References are independent of netlens: the adapted layer's own forward (the drawn weights must
reproduce its output through ``F.conv2d``/``F.linear``), the quantized layers' ``weight()`` and
``bias()``, the colour of the rendered pixels, the model's own weights reduced by numpy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.layers import layer_table
from netlens.render.kernel_figures import kernels_figure

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:model records no preprocessing"),
]


class LoraSubclass(nn.Conv2d):
    """loralib-style: frozen weight, forward convolves with weight + (B @ A) × scaling."""

    def __init__(self, cin: int, cout: int, k: int, r: int = 2) -> None:
        super().__init__(cin, cout, k)
        self.lora_A = nn.Parameter(torch.randn(r * k, cin * k) * 0.3)
        self.lora_B = nn.Parameter(torch.randn(cout * k, r * k) * 0.3)
        self.scaling = 0.5
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_B @ self.lora_A).view(self.weight.shape) * self.scaling
        return F.conv2d(x, self.weight if self.merged else self.weight + delta, self.bias)


class LoraMergedMethod(nn.Conv2d):
    """A LoRA conv whose ``merged`` is a method giving the weight it uses, not loralib's flag."""

    def __init__(self, cin: int, cout: int, k: int, r: int = 2) -> None:
        super().__init__(cin, cout, k)
        self.lora_A = nn.Parameter(torch.randn(r * k, cin * k) * 0.3)
        self.lora_B = nn.Parameter(torch.randn(cout * k, r * k) * 0.3)
        self.scaling = 1.0

    def merged(self) -> torch.Tensor:
        return self.weight + (self.lora_B @ self.lora_A).view(self.weight.shape) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.merged(), self.bias)


class PeftStyle(nn.Module):
    """A wrapper: base_layer(x) + lora_B(lora_A(x)) × scaling, A base-shaped, B 1×1."""

    def __init__(self, base: nn.Conv2d, r: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Conv2d(base.in_channels, r, base.kernel_size, bias=False)
        self.lora_B = nn.Conv2d(r, base.out_channels, 1, bias=False)
        nn.init.normal_(self.lora_B.weight)
        self.scaling = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class PeftLike(nn.Module):
    """peft's LoraLayer protocol: adapters in ModuleDicts, active/merged/disabled adapters."""

    def __init__(self, base: nn.Conv2d, adapters: tuple[str, ...] = ("default", "two")) -> None:
        super().__init__()
        self.base_layer = base
        k = base.kernel_size
        self.lora_A = nn.ModuleDict(
            {a: nn.Conv2d(base.in_channels, 2, k, bias=False) for a in adapters}
        )
        self.lora_B = nn.ModuleDict(
            {a: nn.Conv2d(2, base.out_channels, 1, bias=False) for a in adapters}
        )
        for b in self.lora_B.values():
            nn.init.normal_(b.weight)
        self.scaling = {a: 1.5 for a in adapters}
        self.active_adapters = ["default"]
        self.merged_adapters: list[str] = []
        self.disable_adapters = False

    def get_delta_weight(self, a: str) -> torch.Tensor:
        b, w = self.lora_B[a].weight[:, :, 0, 0], self.lora_A[a].weight
        return torch.einsum("or,rihw->oihw", b, w) * self.scaling[a]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return out
        for a in self.active_adapters:
            out = out + self.lora_B[a](self.lora_A[a](x)) * self.scaling[a]
        return out


def _net(first: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        first, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return getattr(layer, "base_layer", layer).bias


def _forward_matches(model: nn.Sequential, weight: np.ndarray) -> None:
    """The drawn weights reproduce the adapted layer's own output."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model[0](x)
        got = F.conv2d(x, torch.from_numpy(weight), _bias(model[0]))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LoraSubclass(3, 8, 3),
        lambda: LoraMergedMethod(3, 8, 3),
        lambda: PeftStyle(nn.Conv2d(3, 8, 3)),
    ],
)
def test_lora_layer_drawn_with_its_update(make) -> None:
    torch.manual_seed(0)
    model = _net(make())
    r = netlens.load(model, input_size=(3, 32, 32)).kernels()
    assert r.meta["layer"] == "0"  # the adapted layer, not 0.base_layer
    assert "LoRA update included" in r.meta["weight_used"]
    assert not r.meta.get("warnings")
    _forward_matches(model, r.arrays["weight"])
    tiles = r.arrays["weight"].transpose(0, 2, 3, 1)[r.arrays["order"]]
    np.testing.assert_allclose(r.arrays["tiles"], tiles)


def test_loralib_merged_update_not_added_twice() -> None:
    torch.manual_seed(0)
    layer = LoraSubclass(3, 8, 3)
    with torch.no_grad():
        layer.weight += (layer.lora_B @ layer.lora_A).view(layer.weight.shape) * layer.scaling
    layer.merged = True
    model = _net(layer)
    r = netlens.load(model, input_size=(3, 32, 32)).kernels()
    assert "merged" in r.meta["weight_used"]
    _forward_matches(model, r.arrays["weight"])


def test_peft_protocol_active_merged_and_disabled_adapters() -> None:
    torch.manual_seed(0)
    model = _net(PeftLike(nn.Conv2d(3, 8, 3)))
    lens = netlens.load(model, input_size=(3, 32, 32))
    layer = model[0]
    r = lens.kernels()
    assert r.meta["layer"] == "0" and "'default'" in r.meta["weight_used"]
    _forward_matches(model, r.arrays["weight"])
    layer.active_adapters = ["default", "two"]
    _forward_matches(model, lens.kernels().arrays["weight"])
    layer.disable_adapters = True
    r = lens.kernels()
    assert "disabled" in r.meta["weight_used"]
    _forward_matches(model, r.arrays["weight"])
    layer.disable_adapters = False  # merged: the base weight holds the update already
    with torch.no_grad():
        for a in layer.active_adapters:
            layer.base_layer.weight += layer.get_delta_weight(a)
    layer.merged_adapters = list(layer.active_adapters)
    r = lens.kernels()
    assert "merged" in r.meta["weight_used"]
    _forward_matches(model, r.arrays["weight"])


def test_real_peft_lora_matches_merge_and_unload() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 3))
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"], init_lora_weights=False)
    pm = peft.get_peft_model(base, cfg)
    r = netlens.load(pm.base_model.model, input_size=(3, 32, 32)).kernels()
    merged = copy.deepcopy(pm).merge_and_unload()[0].weight.detach().numpy()
    assert r.meta["layer"] == "0" and "LoRA update" in r.meta["weight_used"]
    np.testing.assert_allclose(r.arrays["weight"], merged, atol=1e-6)


def test_unrecognised_adapter_warns_in_one_line() -> None:
    torch.manual_seed(0)
    wrapper = PeftStyle(nn.Conv2d(3, 8, 3))
    del wrapper.lora_A, wrapper.lora_B
    wrapper.hada_w1_a = nn.Parameter(torch.randn(8, 2))  # a LoHa-style factor
    r = netlens.load(_net(wrapper), input_size=(3, 32, 32)).kernels()
    (line,) = r.meta["warnings"]
    assert "\n" not in line and "does not recognise" in line and "merge" in line
    np.testing.assert_array_equal(r.arrays["weight"], wrapper.base_layer.weight.detach().numpy())


def _quantized() -> nn.Module:
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, get_default_qconfig, prepare

    class Q(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.c1, self.r1 = QuantStub(), nn.Conv2d(3, 4, 3), nn.ReLU()
            self.pool, self.fl, self.fc, self.dq = (
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4, 5),
                DeQuantStub(),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dq(self.fc(self.fl(self.pool(self.r1(self.c1(self.q(x)))))))

    q = Q().eval()
    q.qconfig = get_default_qconfig("fbgemm")
    prepare(q, inplace=True)
    q(torch.randn(2, 3, 32, 32))
    return convert(q, inplace=True)


@pytest.mark.filterwarnings("ignore")
def test_layer_table_counts_quantized_weights() -> None:
    torch.manual_seed(0)
    q = _quantized()
    rows = {r.name: r for r in layer_table(q, torch.randn(1, 3, 32, 32))}
    for name in ("c1", "fc"):
        mod = q.get_submodule(name)
        want = mod.weight().numel() + mod.bias().numel()
        assert (rows[name].params, rows[name].trainable) == (want, 0)
    assert rows["r1"].params == 0


def _tile_pixel(fig, grid, k: int) -> np.ndarray:  # noqa: ANN001
    """The RGB colour drawn at the centre of tile ``k``."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    (r, c), (h, w) = grid.origins[k], grid.tile_hw
    x, y = fig.axes[0].transData.transform((c + (w - 1) / 2, r + (h - 1) / 2))
    return img[int(round(img.shape[0] - y)), int(round(x))]


@pytest.mark.parametrize(
    ("cin", "reduce"), [(3, "mean"), (4, "l2"), (4, "mean"), (1, "mean"), (4, "channel:1")]
)
def test_dead_tiles_painted_grey_in_every_view(cin: int, reduce: str) -> None:
    torch.manual_seed(0)
    model = _net(nn.Conv2d(cin, 8, 5))
    with torch.no_grad():
        model[0].weight[2] = 0
    r = netlens.load(model, input_size=(cin, 32, 32)).kernels(reduce=reduce)
    fig, grid = kernels_figure(r.arrays, r.meta)
    k = list(r.arrays["order"]).index(2)
    dead = _tile_pixel(fig, grid, k)
    assert np.abs(dead - 128).max() <= 3, (r.meta["view"], r.meta["reduce"], dead)
    live = _tile_pixel(fig, grid, (k + 1) % len(grid.origins))
    assert np.abs(live - dead).max() > 0


def test_deeper_conv_with_three_inputs_is_not_rgb() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 3, 3),
        nn.ReLU(),
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    lens = netlens.load(model, input_size=(3, 32, 32))
    r = lens.kernels("2")
    assert (r.meta["view"], r.meta["reduce"]) == ("tiles", "mean")
    want = model[2].weight.detach().numpy().mean(1)
    np.testing.assert_allclose(r.arrays["tiles"], want[r.arrays["order"]], rtol=1e-6)
    title = kernels_figure(r.arrays, r.meta)[0].axes[0].get_title()
    assert "RGB" not in title
    assert lens.kernels("0").meta["view"] == "rgb"  # the layer reading the image still is


def test_lora_on_grouped_conv_warns_instead_of_adding() -> None:
    torch.manual_seed(0)
    layer = PeftLike(nn.Conv2d(4, 8, 3, groups=2))  # its update spans all 4 inputs: no filter form
    r = netlens.load(_net(layer), input_size=(4, 32, 32)).kernels()
    (line,) = r.meta["warnings"]
    assert "grouped conv" in line and r.meta["weight_used"] is None
    np.testing.assert_array_equal(r.arrays["weight"], layer.base_layer.weight.detach().numpy())
