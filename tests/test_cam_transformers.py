"""timm ViT and Swin work without a user-written reshape, and agree with pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import layer_output

import netlens


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=(-2, -1), keepdims=True), a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / (hi - lo)


def tiny_vit(global_pool: str = "token") -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_classes=4,
        global_pool=global_pool,
    ).eval()


def tiny_swin() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=64,
        window_size=2,
        depths=(1, 1, 1, 1),
        embed_dim=24,
        num_heads=(1, 1, 1, 1),
        num_classes=4,
    ).eval()


def test_vit_auto_layer_is_the_last_block_with_patch_gradients() -> None:
    from netlens.analyzers.cam_base import cam_layer

    x = torch.zeros(1, 3, 32, 32)
    assert cam_layer(tiny_vit("token"), x) == "blocks.1.norm1"  # class token pooling
    assert cam_layer(tiny_vit("avg"), x) == "blocks.1"


def vit_tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape: drop the class token, 4×4 grid, NCHW."""
    return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam"])
def test_vit_matches_pytorch_grad_cam_with_its_reshape_transform(method: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mine = netlens.cam(model, x, method=method, target=[1, 3])
    assert mine.layer == "blocks.1.norm1" and mine.heatmaps.shape == (2, 32, 32)
    if method == "eigencam":  # pytorch-grad-cam centres before the SVD; compare the raw grid
        return
    cls = {"gradcam": pgc.GradCAM, "layercam": pgc.LayerCAM}[method]
    with cls(
        model=model, target_layers=[model.blocks[1].norm1], reshape_transform=vit_tokens_to_grid
    ) as explainer:
        ref = explainer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in [1, 3]])
    assert ref.std() > 0.05
    np.testing.assert_allclose(mine.heatmaps, _minmax(ref), atol=2e-4)


def test_swin_nhwc_stages_match_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_swin()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mine = netlens.cam(model, x, method="gradcam", layer="layers.2", target=[0, 2])
    with pgc.GradCAM(
        model=model,
        target_layers=[model.layers[2]],
        reshape_transform=lambda t: t.permute(0, 3, 1, 2),
    ) as explainer:
        ref = explainer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in [0, 2]])
    assert ref.std() > 0.05
    np.testing.assert_allclose(mine.heatmaps, _minmax(ref), atol=2e-4)


@pytest.mark.parametrize("method", ["cam", "gradcam++", "ablationcam"])
def test_swin_auto_layer_runs_every_kind_of_method(method: str) -> None:
    model = tiny_swin()
    r = netlens.cam(model, torch.randn(1, 3, 64, 64), method=method)
    assert r.layer == "norm" and r.heatmaps.shape == (1, 64, 64)
    assert r.heatmaps.std() > 0.05


def _naive_gradcam(model: torch.nn.Module, x: torch.Tensor, layer: str, target: int, nhwc: bool):
    """Grad-CAM by hand: the layer's output and gradient, channels-first, pooled weights."""
    acts = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.update(a=o))
    out = model(x)
    hook.remove()
    (g,) = torch.autograd.grad(out[:, target].sum(), acts["a"])
    a = acts["a"]
    if nhwc:
        a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear")
    return up[:, 0].detach().numpy()


def _agrees_with_naive_gradcam(model, x, layer: str, target: int, nhwc: bool) -> None:  # noqa: ANN001
    mine = netlens.cam(model, x, layer=layer, target=target).heatmaps
    ref = _naive_gradcam(model, x, layer, target, nhwc)
    assert mine.std() > 0 and ref.std() > 0
    assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.999


@pytest.mark.parametrize(
    ("arch", "layer", "nhwc"),
    [
        ("swin_t", "features.7", True),  # the stage pytorch-grad-cam's tutorial hooks
        ("swin_t", "norm", True),
        ("swin_t", "permute", False),  # the auto layer: channels first again
        ("convnext_tiny", "features.5.0.block.3", True),  # inside a block, after its Permute
        ("convnext_tiny", "features.5.0.block.0", False),  # the depthwise conv before it
        ("convnext_tiny", "features.5.0", False),  # the block's output
    ],
)
def test_torchvision_layers_that_keep_channels_last_are_read_as_such(arch, layer, nhwc) -> None:
    """torchvision's Swin stages and ConvNeXt's block internals give N×H×W×C (its ``Permute``
    modules move channels last and back); a named one was read as N×C×H×W, so its Grad-CAM
    map was unrelated to the true one (r = 0.04) without a word."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=5).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    _agrees_with_naive_gradcam(model, x, layer, 2, nhwc)


def test_a_convolution_inside_a_channels_last_timm_model_stays_channels_first() -> None:
    """timm's Swin keeps its stages channels last (``output_fmt`` NHWC), but its patch
    embedding's convolution gives N×C×H×W, as every convolution does."""
    model = tiny_swin()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mine = netlens.cam(model, x, layer="patch_embed.proj", target=1).heatmaps
    ref = _naive_gradcam(model, x, "patch_embed.proj", 1, nhwc=False)
    assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.999
    stage = netlens.cam(model, x, layer="layers.1", target=1).heatmaps
    ref = _naive_gradcam(model, x, "layers.1", 1, nhwc=True)
    assert np.corrcoef(stage.ravel(), ref.ravel())[0, 1] > 0.999


def test_stats_count_the_channels_of_a_channels_last_stage() -> None:
    """timm Swin's stages give N×H×W×C: ``stats`` counted H as the channels (2 of them, none
    dead) where ``features`` and ``top`` saw 24; two channels made dead are found."""
    model = tiny_swin()
    with torch.no_grad():
        model.layers[3].blocks[0].mlp.fc2.bias[:2] = -1e4  # two output channels always ≤ 0
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3])
    row = netlens.Lens(model).run("stats", (x, y), layers="layers.3").table[0]
    channels = model.layers[3].blocks[0].mlp.fc2.out_features
    assert row["channels"] == channels
    assert row["dead_channels"] == pytest.approx(2 / channels)


def test_a_linear_layer_on_a_feature_map_keeps_channels_last() -> None:
    """ConvNeXt's pointwise layers are ``nn.Linear`` on N×H×W×C (Hugging Face's, and any
    MetaFormer-style block): ``features`` and ``stats`` read H as the channels (16 of them, top
    channels and dead ones wrong). A Linear acts on the last axis, so that axis is channels."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=3)
    model = tf.ConvNextForImageClassification(cfg).eval()
    layer = "convnext.encoder.stages.0.layers.0.pwconv1"
    with torch.no_grad():
        model.get_submodule(layer).bias[:8] = -100.0  # 8 of its 64 channels dead
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    means = layer_output(model, layer, x).mean((1, 2))  # N×H×W×C: channels last
    lens = netlens.Lens(model)
    feats = lens.features(x[:1], layer)
    np.testing.assert_allclose(feats.arrays[f"{layer}:means"][0], means[0].numpy(), atol=1e-5)
    row = lens.run("stats", (x, torch.tensor([0, 1, 2, 0])), layers=layer).table[0]
    assert row["channels"] == 64 and row["dead_channels"] == pytest.approx(8 / 64)


def _hf_convnext() -> torch.nn.Module:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=3)
    return tf.ConvNextForImageClassification(cfg).eval()


@pytest.mark.parametrize(
    ("layer", "nhwc"),
    [
        ("stages.1.blocks.0.mlp.act", True),  # a GELU between two Linear layers
        ("stages.1.blocks.0.norm", True),  # timm's LayerNorm (a subclass) on N×H×W×C
        ("stages.1.blocks.0.mlp", True),  # a container: its last layer's output
        ("stages.1.blocks.0.conv_dw", False),
        ("stages.2.downsample.0", False),  # timm's LayerNorm2d: channels second
    ],
)
def test_activations_between_channels_last_layers_are_read_channels_last(layer, nhwc) -> None:
    """timm ConvNeXt without ``conv_mlp`` (convnext_tiny and up) runs each block's norm and MLP
    on N×H×W×C: its GELU, norm and MLP were read as N×C×H×W (H taken for channels), so their
    maps, features and statistics were wrong without a word. The layout is now followed
    through a dry forward, whatever the modules' types."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=4, conv_mlp=False).eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    _agrees_with_naive_gradcam(model, x, layer, 1, nhwc)


def test_hugging_face_convnext_activations_and_norms_keep_channels_last() -> None:
    """Hugging Face's ConvNextLayer: ``layernorm`` (data_format channels_last) and ``act`` see
    N×H×W×C; ``stats`` counted 16 (H) channels for 64 and ``features`` ranked rows."""
    model = _hf_convnext()
    prefix = "convnext.encoder.stages.0.layers.0."
    with torch.no_grad():
        model.get_submodule(prefix + "pwconv1").bias[:8] = -100.0  # 8 of 64 channels dead
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    lens = netlens.Lens(model)
    feats = lens.features(x[:1], prefix + "act")
    means = layer_output(model, prefix + "act", x).mean((1, 2))  # N×H×W×C
    np.testing.assert_allclose(feats.arrays[f"{prefix}act:means"][0], means[0], atol=1e-5)
    rows = lens.run("stats", (x, torch.tensor([0, 1, 2, 0])), layers=prefix + "*").table
    by = {r["layer"]: r for r in rows}
    assert by[prefix + "act"]["channels"] == 64 and by[prefix + "layernorm"]["channels"] == 16
    assert by[prefix + "dwconv"]["channels"] == 16 and by[prefix + "drop_path"]["channels"] == 16
    assert by[prefix + "act"]["dead_channels"] == pytest.approx(8 / 64, abs=0.02)


def _kl_zeroing(model, x, layer: str, index) -> float:  # noqa: ANN001
    """KL from the intact model's softmax after zeroing ``out[index]`` of ``layer``, by hand."""

    def hook(m, i, o):  # noqa: ANN001, ANN202
        o = o.clone()
        o[index] = 0
        return o

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return getattr(out, "logits", out).double()

    with torch.no_grad():
        base = torch.log_softmax(logits(x), 1)
        handle = model.get_submodule(layer).register_forward_hook(hook)
        ablated = torch.log_softmax(logits(x), 1)
        handle.remove()
    return float((base.exp() * (base - ablated)).sum(1).mean())


@pytest.mark.parametrize(
    ("make", "layer", "size"),
    [
        (tiny_swin, "layers.3", 64),  # timm Swin: N×H×W×C stages
        (tiny_vit, "blocks.0.mlp.fc1", 32),  # tokens: N×L×D
        (lambda: _hf_convnext(), "convnext.encoder.stages.1.layers.0.act", 64),  # GELU, NHWC
    ],
    ids=["swin-stage", "vit-tokens", "hf-convnext-act"],
)
def test_channel_ablation_of_a_channels_last_layer_zeroes_its_last_axis(make, layer, size):  # noqa: ANN001
    """A Swin stage's rows were ablated as if they were channels, without a word (then it was
    refused); a ViT token layer's tokens were (channel 0 = the class token). Channels are the
    last axis of such layers, as features and stats count them."""
    model = make().eval()
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(4))
    res = netlens.Lens(model, netlens.Preprocess(size=(size, size))).ablate(
        (x, torch.tensor([0, 1, 2, 0])), mode="zero", layers=layer, channels=[0, 5], metric="kl"
    )
    got = {r["channel"]: r["value"] for r in res.table if r["kind"] == "channel"}
    for c in (0, 5):
        want = _kl_zeroing(model, x, layer, (..., c))
        assert want > 0 and got[c] == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_window_attention_internals_are_refused_not_folded_into_the_batch() -> None:
    """timm MaxViT's attention runs on windows folded into the batch: Grad-CAM gave 128 maps
    for 2 images, and ``features`` ranked windows as images, without a word."""
    from netlens.errors import AnalyzerError

    torch.manual_seed(0)
    model = timm.create_model("maxvit_nano_rw_256", num_classes=3, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    layer = "stages.0.blocks.0.attn_block.attn"
    with pytest.raises(AnalyzerError, match="128 maps for 2 image"):
        netlens.cam(model, x, layer=layer, target=1)
    with pytest.raises(AnalyzerError, match="windows or patches folded into the batch"):
        netlens.Lens(model).features(x, layer)
    assert netlens.cam(model, x, layer="stages.0", target=1).heatmaps.shape == (2, 64, 64)


def _shapes_4d(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    from netlens.layers import named_layers

    got: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, m in named_layers(model).items():

        def hook(m, i, o, name=name) -> None:  # noqa: ANN001
            if isinstance(o, torch.Tensor) and o.dim() == 4:
                got.setdefault(name, tuple(o.shape))

        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


@pytest.mark.parametrize(
    "make",
    [
        lambda: timm.create_model("convnext_atto", num_classes=3, conv_mlp=False),
        lambda: timm.create_model("mambaout_femto", num_classes=3),  # NHWC, permutes in forward
        lambda: timm.create_model("poolformer_s12", num_classes=3),  # GroupNorm, NCHW
        lambda: _hf_convnext(),
    ],
    ids=["timm-convnext", "timm-mambaout", "timm-poolformer", "hf-convnext"],
)
def test_every_layers_layout_agrees_with_the_width_oracle(make) -> None:  # noqa: ANN001
    """An independent oracle: run the model at two input widths; the axis of a layer's output
    that follows the width is W (axis 3: N×C×H×W; axis 2: N×H×W×C). netlens' reading of every
    4-d layer must agree (timm MambaOut's stem GELU, between a ``permute`` in its forward and a
    conv, was read channels last by the ``output_fmt`` rule)."""
    from netlens.activations import channels_last
    from netlens.channel_layout import learn_layouts

    model = make().eval()
    learn_layouts(model, torch.zeros(1, 3, 64, 64))
    a = _shapes_4d(model, torch.zeros(1, 3, 64, 64))
    b = _shapes_4d(model, torch.zeros(1, 3, 64, 96))
    checked, wrong = 0, []
    for name, shape in a.items():
        moved = [i for i in range(4) if shape[i] != b.get(name, shape)[i]]
        if moved not in ([2], [3]):
            continue
        checked += 1
        if channels_last(model, name) != (moved == [2]):
            wrong.append((name, shape))
    assert checked > 30 and wrong == []


def test_a_channels_last_norm_whose_channels_equal_its_height_and_width() -> None:
    """At 160 px timm ConvNeXt-atto's first block norm gives 1×40×40×40 (C = H = W): its shape
    cannot tell the layout, so it was read channels first (features' channel 5, a constant −1,
    read as −0.02). A layer norm not named 2-d norms its last axis, whatever the sizes."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=3, conv_mlp=False).eval()
    layer = "stages.0.blocks.0.norm"
    with torch.no_grad():
        model.get_submodule(layer).weight[5] = 0.0
        model.get_submodule(layer).bias[5] = -1.0
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(7))
    feats = netlens.Lens(model, netlens.Preprocess(size=(160, 160))).features(x, layer)
    means = feats.arrays[f"{layer}:means"]
    assert means.shape == (2, 40) and np.allclose(means[:, 5], -1.0, atol=1e-5)


def test_a_call_that_raises_inside_a_caught_branch_does_not_shift_the_layouts() -> None:
    """A block that tries a module and goes on when it raises (``try: ... except``) left that
    call's input on the layout tracker's stack, so the block was paired with it, not with its
    own input: its channels-last output was read channels first."""

    class Picky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("not this one")

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.picky = Picky()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                self.picky(torch.zeros(1, 5, 5, 5))
            except RuntimeError:
                pass
            return x * 2

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 8)
            self.block = Block()
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.block(self.fc(self.conv(x).permute(0, 2, 3, 1)))  # N×H×W×C
            return self.head(f.mean((1, 2)))

    from netlens.activations import channels_last
    from netlens.channel_layout import learn_layouts

    model = Net().eval()
    learn_layouts(model, torch.zeros(1, 3, 16, 16))
    assert [channels_last(model, n) for n in ("conv", "fc", "block")] == [False, True, True]


def test_a_class_token_model_whose_blocks_are_not_a_stack_gets_a_live_layer() -> None:
    """A 1-block Hugging Face ViT and Data2VecVision (its layers return tuples) had ``auto``
    pick the final LayerNorm, whose patch tokens reach the class-token head not at all: every
    Grad-CAM map was zero. The last block's first norm is taken, as for deeper ViTs."""
    import transformers as T

    torch.manual_seed(0)
    common = dict(image_size=32, patch_size=8, hidden_size=24, num_attention_heads=2)
    common |= dict(intermediate_size=32, num_labels=3)
    models = {
        "vit.layers.0.layernorm_before": T.ViTForImageClassification(
            T.ViTConfig(num_hidden_layers=1, **common)
        ),
        "data2vec_vision.encoder.layer.1.layernorm_before": T.Data2VecVisionForImageClassification(
            T.Data2VecVisionConfig(use_mean_pooling=False, num_hidden_layers=2, **common)
        ),
    }
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for want, model in models.items():
        result = netlens.cam(model.eval(), x, target=1)
        assert result.layer == want and float(np.asarray(result.heatmaps).std()) > 0.01
