"""timm ViT and Swin work without a user-written reshape, and agree with pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

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
