"""Channels-last layers of foreign (timm) models that plain tensor ops feed, read as N×H×W×C,
and the features' auto layer on a channels-last final map whose height equals the class count.

The reference is the layer's own output from a plain forward hook, laid out as the model's code
says: TinyViT's blocks take and return B×H×W×C (``TinyVitBlock.forward``: ``B, H, W, C =
x.shape`` … ``x.view(B, H, W, C)``); MaxViT's and GCViT's attention blocks reverse their
windows to B×H×W×C before ``ls1`` / ``drop_path1`` (``window_reverse``); a timm Swin's ``norm``
is B×H×W×C (``output_fmt`` NHWC).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import layer_output

import netlens
from netlens.images import Preprocess
from netlens.lens import Lens

CASES = [
    # (model, layer): the block whose input its stage permutes; the stage of such blocks
    ("tiny_vit_5m_224", "stages.1.blocks.1"),
    ("tiny_vit_5m_224", "stages.2.blocks"),
    # the LayerScale / DropPath after a window-reversed attention output
    ("maxxvit_rmlp_nano_rw_256", "stages.0.blocks.0.attn_block.ls1"),
    ("maxxvit_rmlp_nano_rw_256", "stages.1.blocks.0.attn_grid.drop_path1"),
    ("gcvit_xxtiny", "stages.1.blocks.0.ls1"),
]

_MODELS: dict[str, torch.nn.Module] = {}


def _model(arch: str) -> torch.nn.Module:
    """``arch`` for 64×64 px, 3 classes, random weights (one per test session); TinyViT takes
    no ``img_size`` (its attention pads the windows)."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        size = {} if arch.startswith("tiny_vit") else {"img_size": 64}
        _MODELS[arch] = timm.create_model(
            arch, pretrained=False, num_classes=3, drop_path_rate=0.1, **size
        ).eval()
    return _MODELS[arch]


@pytest.mark.parametrize(("arch", "layer"), CASES)
def test_channels_last_layers_fed_by_tensor_ops(arch: str, layer: str, one_thread) -> None:  # noqa: ANN001
    model = _model(arch)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = layer_output(model, layer, x)  # N×H×W×C, as the model's code lays it out
    n, h, w, c = ref.shape
    assert h == w and c != h  # the layout shows in the shape
    means = ref.mean((1, 2))
    lens = Lens(model, Preprocess(size=(64, 64)))
    feats = lens.features(x[:2], layer=layer, top=2)
    assert feats.meta["shapes"][layer] == [2, c, h, w]
    np.testing.assert_allclose(feats.arrays[f"{layer}:means"], means[:2].numpy(), atol=1e-5)
    layout = {info.name: info.layout for info in lens.layers()}
    assert layout[layer] == "NHWC"
    row = lens.run("stats", (x, torch.tensor([0, 1, 2, 0])), layers=layer).table[0]
    assert row["channels"] == c


def _small_swin(classes: int) -> torch.nn.Module:
    """A two-stage timm Swin on 56×56 px: its final ``norm`` is 1×7×7×48 (channels last)."""
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=56,
        embed_dim=24,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=classes,
    ).eval()


@pytest.mark.parametrize("classes", [5, 7])
def test_auto_feature_layer_when_the_map_height_equals_the_class_count(
    classes: int,
    one_thread,  # noqa: ANN001
) -> None:
    """7 classes on a 7×7×48 map: the map's height is no class-map channel count, so auto
    keeps the final ``norm`` (it took the last block's attention weights instead)."""
    model = _small_swin(classes)
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    ref = layer_output(model, "norm", x)
    assert tuple(ref.shape) == (1, 7, 7, 48)
    r = netlens.Lens(model, Preprocess(size=(56, 56))).features(x, top=2)
    assert r.meta["layers"] == ["norm"]
    assert r.meta["shapes"]["norm"] == [1, 48, 7, 7]
    np.testing.assert_allclose(r.arrays["norm:means"], ref.mean((1, 2)).numpy(), atol=1e-5)


def test_auto_layer_skips_a_channels_last_stage_pooled_to_one_pixel(one_thread) -> None:  # noqa: ANN001
    """MambaOut keeps channels last through its stages: at 32 px its last stage is 1×1×1×288.
    Auto read that as a 1×288 map, chose it, then refused it; it now takes the last stage
    whose N×H×W×C output is larger than 1×1."""
    torch.manual_seed(0)
    model = timm.create_model("mambaout_femto", pretrained=False, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert tuple(layer_output(model, "stages.3", x).shape) == (1, 1, 1, 288)
    lens = Lens(model, Preprocess(size=(32, 32)))
    feats = lens.features(x, top=2)
    (layer,) = feats.meta["layers"]
    ref = layer_output(model, layer, x)
    n, h, w, c = ref.shape
    assert h * w > 1
    assert feats.meta["shapes"][layer] == [1, c, h, w]
    np.testing.assert_allclose(feats.arrays[f"{layer}:means"], ref.mean((1, 2)).numpy(), atol=1e-5)
    cam = lens.cam(x, method="gradcam")
    assert cam.meta["layers"] == [layer]
