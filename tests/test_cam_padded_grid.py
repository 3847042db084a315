"""CAMs of a ViT whose patch grid pads the input (timm ``dynamic_img_pad``: a 50×70 image is 4×5
patches of 16 over 64×80, padded at the bottom and right) put each cell on its own patch: the
map is the grid resized to 64×80 and cut to 50×70, checked against a hand-written Grad-CAM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import netlens

timm = pytest.importorskip("timm")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def padded_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=4, depth=1,
        dynamic_img_size=True, dynamic_img_pad=True, global_pool="avg",
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def naive_gradcam(model: torch.nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM on ``blocks.0``'s patch tokens, upsampled over the padded 64×80 and cut."""
    keep = {}
    handle = model.blocks[0].register_forward_hook(lambda _m, _i, o: keep.setdefault("o", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    tokens = keep["o"]
    (grad,) = torch.autograd.grad(out[:, target].sum(), tokens)
    n = model.num_prefix_tokens
    acts = tokens[:, n:].reshape(len(x), 4, 5, -1).permute(0, 3, 1, 2)
    grads = grad[:, n:].reshape(len(x), 4, 5, -1).permute(0, 3, 1, 2)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    big = F.interpolate(cam, size=(64, 80), mode="bilinear", align_corners=False)[:, 0, :50, :70]
    lo = big.flatten(1).min(1).values[:, None, None]
    hi = big.flatten(1).max(1).values[:, None, None]
    return ((big - lo) / (hi - lo)).detach()


def test_gradcam_on_a_padded_patch_grid_sits_on_its_patches() -> None:
    model = padded_vit()
    x = torch.randn(2, 3, 50, 70, generator=torch.Generator().manual_seed(1))
    lens = netlens.load(model, mean=[0.5] * 3, std=[0.5] * 3, input_size=64)
    res = lens.cam(x, method="gradcam", layer="blocks.0", target=1)
    ref = naive_gradcam(model, x, 1)
    got = torch.as_tensor(res.heatmaps)
    assert got.shape == (2, 50, 70)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=0)
