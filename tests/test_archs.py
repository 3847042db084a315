"""Reference architectures: shapes, input_size, registration, the CAM-ready head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netlens.models import archs
from netlens.models.factory import create_arch
from netlens.plugins.manager import PluginHost


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


@pytest.mark.parametrize(
    ("name", "chans", "size"),
    [
        ("lenet5", 1, 28),
        ("lenet5", 1, 32),
        ("vgg", 1, 28),
        ("vgg", 3, 32),
        ("resnet", 1, 28),
        ("resnet", 3, 64),
        ("allconv", 3, 64),
        ("allconv", 1, 28),
    ],
)
def test_registered_archs_build_and_classify(
    host: PluginHost, name: str, chans: int, size: int
) -> None:
    model = create_arch(name, 7, host, in_chans=chans, img_size=size)
    assert model.input_size == (chans, size, size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, chans, size, size))
    assert out.shape == (2, 7)


def test_lenet5_has_the_1998_layout() -> None:
    m = archs.lenet5(num_classes=10)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    fcs = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert [f.out_features for f in fcs] == [120, 84, 10]
    assert fcs[0].in_features == 16 * 5 * 5  # 28 px padded to 32 as in the paper


def test_resnet_stages_are_basic_blocks_with_residuals() -> None:
    m = archs.resnet(num_classes=10, widths=(8, 16, 32), blocks=(2, 2, 2))
    for stage in ("layer1", "layer2", "layer3"):
        blocks = list(getattr(m, stage))
        assert len(blocks) == 2 and all(isinstance(b, archs.BasicBlock) for b in blocks)
    assert m.layer2[0].downsample is not None and m.layer1[0].downsample is None
    # the shortcut really adds the input: zeroing the residual branch leaves relu(x)
    block = archs.BasicBlock(4, 4).eval()
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(1, 4, 6, 6)
    assert torch.allclose(block(x), torch.relu(x))


def test_allconv_logits_are_the_mean_of_the_class_maps() -> None:
    m = archs.allconv(num_classes=5, in_chans=3, img_size=32).eval()
    maps = {}
    h = m.classifier.register_forward_hook(lambda mod, i, o: maps.setdefault("cam", o))
    try:
        with torch.no_grad():
            logits = m(torch.randn(2, 3, 32, 32))
    finally:
        h.remove()
    cam = maps["cam"]
    assert cam.shape[:2] == (2, 5) and cam.shape[-1] > 1
    assert torch.allclose(cam.mean((2, 3)), logits, atol=1e-6)
    assert not any(isinstance(x, nn.Linear) for x in m.modules())


def test_archs_register_through_the_plugin_hook(host: PluginHost) -> None:
    for name in ("lenet5", "vgg", "resnet", "allconv"):
        entry = host.archs.entries[name]
        assert entry.builtin and entry.plugin == "archs"
