"""Hugging Face ``transformers`` image classifiers (random weights, small configs): outputs as
``ModelOutput`` objects, token layers, class-token pooling told by gradients, agreement with
pytorch-grad-cam given the reshape its documentation asks for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import layer_output
from torch import nn

import netlens

tf = pytest.importorskip("transformers", reason="Hugging Face models need the bench extras")
pgc = pytest.importorskip("pytorch_grad_cam", reason="parity needs the bench extras (grad-cam)")


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def tiny(config: type, **kw: object) -> object:
    """A transformers config of a tiny two-layer transformer (32 wide, 2 heads, 4 classes),
    ``kw`` on top."""
    base = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    return config(**(base | {"intermediate_size": 64, "num_labels": 4} | kw))


def vit(distilled: bool = False, labels: dict[int, str] | None = None) -> nn.Module:
    """A tiny ViT (DeiT with its distillation token) with random weights; four unnamed classes,
    or ``labels``."""
    torch.manual_seed(0)
    kw: dict = {"image_size": 32, "patch_size": 8}
    if labels:
        kw |= {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
        kw["num_labels"] = len(labels)
    if distilled:
        return tf.DeiTForImageClassificationWithTeacher(tiny(tf.DeiTConfig, **kw)).eval()
    return tf.ViTForImageClassification(tiny(tf.ViTConfig, **kw)).eval()


def convnext() -> nn.Module:
    torch.manual_seed(0)
    cfg = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=4)
    return tf.ConvNextForImageClassification(cfg).eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    cfg = tf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=4
    )
    return _randomise_bn(tf.ResNetForImageClassification(cfg))


class Logits(nn.Module):
    """What pytorch-grad-cam needs: the logits tensor, not a ``ModelOutput``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def tokens_to_grid(prefix: int):  # noqa: ANN201
    """pytorch-grad-cam's documented ViT reshape: drop the prefix tokens, a square grid, NCHW."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        side = int((t.size(1) - prefix) ** 0.5)
        return t[:, prefix:, :].reshape(t.size(0), side, side, t.size(2)).permute(0, 3, 1, 2)

    return reshape


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=(-2, -1), keepdims=True), a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / (hi - lo)


CASES = {
    # name: (model, auto layer netlens must pick, tokens before the grid)
    "vit": (vit, "layers.1.layernorm_before", 1),  # class-token pooling: the block's first norm
    "deit-distilled": (lambda: vit(True), "layers.1.layernorm_before", 2),  # class + distil
    "convnext": (convnext, "convnext.encoder.stages.3", None),
    "resnet": (resnet, "resnet.encoder.stages.3", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_classifiers_match_pytorch_grad_cam(name: str) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    make, layer, prefix = CASES[name]
    model = make()
    size = 32 if prefix else 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    mine = netlens.cam(model, x, target=[1, 3])
    assert mine.layer.endswith(layer), mine.layer
    module = dict(model.named_modules())[mine.layer]
    reshape = tokens_to_grid(prefix) if prefix else None
    with pgc.GradCAM(Logits(model), [module], reshape_transform=reshape) as explainer:
        ref = explainer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (1, 3)])
    assert ref.std() > 0.05 and mine.heatmaps.std() > 0.05  # the block itself gives empty maps
    for a, b in zip(mine.heatmaps, _minmax(ref), strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_a_mean_pooled_token_model_keeps_the_block() -> None:
    """BEiT pools the mean of its patch tokens: every token reaches the output."""
    torch.manual_seed(0)
    cfg = tiny(tf.BeitConfig, image_size=32, patch_size=8, use_mean_pooling=True)
    model = tf.BeitForImageClassification(cfg).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = netlens.cam(model, x)
    assert not res.layer.endswith("layernorm_before") and res.heatmaps.std() > 0.05


def test_dinov2_with_registers_lays_its_patches_out_past_its_register_tokens() -> None:
    """DINOv2 with registers (config ``num_register_tokens=4``): class token, 4 registers,
    then the patches. netlens dropped one token only, so no grid fit: ``features`` refused
    and ``cam``'s auto layer fell back, without a word, to the patch embedding."""
    torch.manual_seed(0)
    cfg = tiny(tf.Dinov2WithRegistersConfig, image_size=64, patch_size=16, num_register_tokens=4)
    model = tf.Dinov2WithRegistersForImageClassification(cfg).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    block = "dinov2_with_registers.encoder.layer.1"
    res = netlens.Lens(model).cam(x, method="layercam")
    assert res.layer == block
    tokens = {}
    hook = model.get_submodule(block).register_forward_hook(lambda m, i, o: tokens.update(t=o))
    with torch.no_grad():
        model(x)
    hook.remove()
    out = tokens["t"][0] if isinstance(tokens["t"], tuple) else tokens["t"]
    grid = out[:, 5:, :].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)  # past the 1 + 4 tokens
    feats = netlens.Lens(model).features(x, block)
    assert feats.meta["shapes"][block] == [1, 32, 4, 4]
    means = grid.mean((2, 3))[0].numpy()
    np.testing.assert_allclose(feats.arrays[f"{block}:means"][0], means, rtol=1e-5, atol=1e-6)


def test_a_non_square_vit_grid_whose_token_count_is_a_square() -> None:
    """A Hugging Face ViT on 96×216 inputs (patch 8): 12×27 = 324 patches, which is 18², so its
    tokens were folded into an 18×18 grid (the model has no ``patch_embed.grid_size``): maps,
    top positions and Grad-CAM (r = 0.07) scrambled, without a word. The input's shape says
    the grid."""
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tiny(tf.ViTConfig, image_size=(96, 216), patch_size=8))
    model.eval()
    layer = next(n for n, _ in model.named_modules() if n.endswith("layers.0.mlp.fc1"))
    x = torch.randn(2, 3, 96, 216, generator=torch.Generator().manual_seed(1))
    want = layer_output(model, layer, x)[:, 1:].reshape(2, 12, 27, -1).permute(0, 3, 1, 2)
    lens = netlens.Lens(model, netlens.Preprocess(size=(96, 216)))
    maps = lens.features(x, layer, channels=[0, 3]).arrays[f"{layer}:maps"]
    np.testing.assert_allclose(maps, want[:, [0, 3]].numpy(), atol=1e-5)


def test_a_layer_returning_a_tuple_is_named_as_such_by_every_analyzer() -> None:
    """Hugging Face blocks return tuples: ``cam`` said "no probed layer ran with gradients
    enabled" and ``stats`` "the dataset is empty?". ``cam``, ``features`` and ``top`` now take
    the tuple's first element (the block's hidden states, a map); ``stats`` too (it refused
    the tuple)."""
    torch.manual_seed(0)
    cfg = tf.PoolFormerConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_labels=3)
    model = tf.PoolFormerForImageClassification(cfg).eval()
    layer = "poolformer.encoder.block.1.0"
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    lens = netlens.Lens(model, netlens.Preprocess(size=(64, 64)))
    with torch.no_grad():
        hidden = model.poolformer.encoder.block[1][0](
            model.poolformer.encoder.patch_embeddings[1](
                model.poolformer.encoder.block[0][0](
                    model.poolformer.encoder.patch_embeddings[0](x)
                )[0]
            )
        )[0]
    feats = lens.features(x, layer, top=3)
    means = hidden.mean((2, 3))
    assert torch.equal(torch.as_tensor(feats.arrays[f"{layer}:channels"]), means.topk(3).indices)
    assert lens.cam(x, layer=layer, target=1).heatmaps.shape == (2, 64, 64)
    top = lens.run("top-activations", (x, y), layer=layer)
    assert top.table
    (row,) = lens.run("stats", (x, y), layers=[layer]).table
    assert row["layer"] == layer and row["channels"] == hidden.shape[1]
    assert row["mean"] == pytest.approx(float(hidden.double().mean()), rel=1e-5)
    assert row["std"] == pytest.approx(float(hidden.double().std(unbiased=False)), rel=1e-4)
    assert row["max"] == pytest.approx(float(hidden.max()), rel=1e-6)
