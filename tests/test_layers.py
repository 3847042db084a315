"""Layer selectors, close-name hints, the auto CAM layer and the layer table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netlens.errors import LayerNotFoundError
from netlens.layers import auto_layer, eval_mode, layer_table, resolve_layers


def test_exact_glob_type_and_comma(resnet18):
    assert resolve_layers(resnet18, "layer4") == ["layer4"]
    assert resolve_layers(resnet18, "layer*.0.conv?") == [
        f"layer{i}.0.conv{j}" for i in range(1, 5) for j in (1, 2)
    ]
    assert resolve_layers(resnet18, "type:Linear") == ["fc"]
    assert resolve_layers(resnet18, "type:nn.Linear, layer1") == ["fc", "layer1"]
    assert resolve_layers(resnet18, [resnet18.layer2]) == ["layer2"]


def test_unknown_names_suggest_close_ones(resnet18):
    with pytest.raises(LayerNotFoundError) as err:
        resolve_layers(resnet18, "layer4.1.cnv2")
    msg = str(err.value)
    assert "layer4.1.conv2" in msg and "\n" not in msg and "netlens layers" in msg
    with pytest.raises(LayerNotFoundError, match="Conv2d"):
        resolve_layers(resnet18, "type:Conv3d")
    with pytest.raises(LayerNotFoundError, match="not part of"):
        resolve_layers(resnet18, [nn.Linear(2, 2)])


def test_auto_layer_picks_last_spatial_block(resnet18, tiny):
    assert auto_layer(resnet18, torch.zeros(1, 3, 64, 64)) == "layer4"
    assert resolve_layers(resnet18, "auto", example=torch.zeros(1, 3, 64, 64)) == ["layer4"]
    assert auto_layer(tiny) == "act2"


def test_auto_layer_on_torchvision_alexnet():
    import torchvision

    model = torchvision.models.alexnet(num_classes=3).eval()
    assert auto_layer(model) == "features"  # the conv stack, not the 6×6 adaptive pool


def test_layer_table_and_modes_restored(tiny):
    tiny.train()
    rows = {r.name: r for r in layer_table(tiny)}
    assert tiny.training and all(m.training for m in tiny.modules())
    assert rows["conv1"].output_shape == (1, 8, 32, 32)
    assert rows["fc"].output_shape == (1, 4)
    assert rows["conv1"].params == 8 * 3 * 9 + 8
    assert rows["fc"].trainable == 16 * 4 + 4


def test_eval_mode_restores_each_flag(tiny):
    tiny.train()
    tiny.bn1.eval()
    with eval_mode(tiny):
        assert not any(m.training for m in tiny.modules())
    assert tiny.training and not tiny.bn1.training and tiny.conv1.training


def test_auto_layer_on_vit_picks_last_block():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    assert auto_layer(vit) == "blocks.11"  # not the patch embedding's conv


def _tv_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()


def test_auto_layer_on_torchvision_vit_picks_last_encoder_block():
    """torchvision's blocks are ``encoder_layer_K``, not numbered children: regression, the
    patch embedding conv was chosen; with class-token pooling, CAM reads ``ln_1``."""
    from netlens.analyzers.cam_base import cam_layer

    vit = _tv_vit()
    x = torch.zeros(1, 3, 32, 32)
    assert auto_layer(vit, x) == "encoder.layers.encoder_layer_1"
    assert cam_layer(vit, x) == "encoder.layers.encoder_layer_1.ln_1"


def test_auto_layer_ignores_attention_tensors_of_attention_pooling():
    """timm's ``global_pool="map"`` (SigLIP) runs q/k norms on N×heads×L×d tensors after the
    last block: regression, such a 4-D tensor inside a token module was taken for a map."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        global_pool="map",
        class_token=False,
        num_classes=4,
    ).eval()
    assert auto_layer(vit, torch.zeros(1, 3, 32, 32)) == "blocks.1"


class _TupleBlock(nn.Module):
    """An MViTv2-like block: takes and returns ``(tokens, size)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple:
        return x + self.mlp(x), size


class _TupleTokens(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.blocks = nn.ModuleList([_TupleBlock(d), _TupleBlock(d)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        size = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t, size = blk(t, size)
        return self.head(self.norm(t).mean(1))


def test_auto_layer_falls_back_to_the_last_token_grid_when_blocks_return_tuples():
    """Regression: with no block returning a tensor the patch conv was chosen (MViTv2)."""
    assert auto_layer(_TupleTokens(), torch.zeros(1, 3, 16, 16)) == "norm"


def test_to_spatial_uses_the_patch_grid_when_blocks_carry_no_class_token():
    """CaiT's self-attention blocks carry only the patch tokens though the model has a class
    token (``num_prefix_tokens=1``): regression, 16 tokens were refused as no 4×4 grid."""
    from netlens.activations import to_spatial

    model = nn.Module()
    model.num_prefix_tokens = 1
    model.patch_embed = nn.Module()
    model.patch_embed.grid_size = (4, 4)
    t = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    assert torch.equal(to_spatial(t, model), t.reshape(2, 4, 4, 3).permute(0, 3, 1, 2))
    with_cls = torch.cat([torch.full((2, 1, 3), -1.0), t], dim=1)
    assert torch.equal(to_spatial(with_cls, model), to_spatial(t, model))


def test_type_selects_subclasses_too():
    """A conv under weight_norm becomes a ParametrizedConv2d, timm's StdConv2d subclasses
    Conv2d: ``type:Conv2d`` used to leave them out (the stem conv of a weight-normed ResNet)."""
    import torchvision
    from torch.nn.utils.parametrizations import weight_norm

    model = torchvision.models.resnet18(num_classes=3)
    model.conv1 = weight_norm(model.conv1)
    convs = resolve_layers(model, "type:Conv2d")
    assert convs[0] == "conv1" and len(convs) == 20
    assert resolve_layers(model, "type:ParametrizedConv2d") == ["conv1"]


def test_the_layer_table_says_how_each_layer_is_read() -> None:
    """`netlens layers` now shows each layer's layout (NCHW, NHWC, NLC), the reading every
    analyzer uses, so a ConvNeXt MLP's channels-last outputs are visible before picking it."""
    import subprocess
    import sys

    import timm

    from netlens.layers import layer_table

    model = timm.create_model("convnext_atto", num_classes=3, conv_mlp=False).eval()
    rows = {r.name: r for r in layer_table(model, torch.zeros(1, 3, 64, 64))}
    assert rows["stages.0.blocks.0.conv_dw"].layout == "NCHW"
    assert rows["stages.0.blocks.0.mlp.act"].layout == "NHWC"
    assert rows["head.fc"].layout == ""
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
    assert {r.name: r for r in layer_table(vit)}["blocks.0.mlp.fc1"].layout == "NLC"
    piped = subprocess.run(  # piped output keeps its cells whole (rich squeezed it to 80)
        [sys.executable, "-m", "netlens", "layers", "zoo:shapes-allconv"],
        capture_output=True,
        text=True,
        env={k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"},
        check=True,
    )
    assert "…" not in piped.stdout and " layout " in piped.stdout


def test_parametrized_weights_are_not_layers():
    """``parametrizations.weight_norm`` runs a module to compute the weight each time it is
    read; its "output" is the weight, not a map, and the automatic CAM layer must not take it."""
    from torch.nn.utils.parametrizations import weight_norm

    from netlens.layers import auto_layer, named_layers

    net = nn.Sequential(
        weight_norm(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        weight_norm(nn.Conv2d(8, 16, 3, padding=1)),  # on 1×1 maps; its weight is 16×8×3×3
        nn.Flatten(), nn.Linear(16, 2),
    ).eval()  # fmt: skip
    assert "3.parametrizations.weight" not in named_layers(net)
    assert set(named_layers(net)) == {"0", "1", "2", "3", "4", "5"}
    assert auto_layer(net, torch.zeros(2, 3, 8, 8)) == "1"
