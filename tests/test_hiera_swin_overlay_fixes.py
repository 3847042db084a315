"""Hugging Face Hiera's mask-unit token order, Swin's window-attention advice, and features'
overlay of a dynamically padded ViT's patch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netlens
from netlens.errors import AnalyzerError

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _hf_hiera() -> torch.nn.Module:
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.HieraConfig(
        embed_dim=8,
        image_size=[64, 64],
        patch_size=[7, 7],
        patch_stride=[4, 4],
        patch_padding=[3, 3],
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        num_labels=3,
    )
    model = T.HieraForImageClassification(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layernorm" in n and n.endswith("weight"):
                p.normal_(1, 0.5)
    return model


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def test_hf_hiera_stage_maps_are_rerolled_as_the_model_does() -> None:
    """Hugging Face Hiera keeps every stage's tokens but the last in mask-unit order; they were
    reshaped row by row (Grad-CAM r = 0.55, 0.23, −0.17 against the rerolled reference). The
    model's own ``encoder.reroll`` (its ``reshaped_hidden_states``) puts them in place."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _hf_hiera()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    x[:, :, :24, 40:] += 2.0  # something off-centre
    encoder = model.hiera.encoder
    for stage in (0, 1, 2):
        layer = f"hiera.encoder.stages.{stage}.layers.0.mlp"
        res = netlens.cam(model, x, layer=layer, target=1)

        def reroll(t: torch.Tensor, stage: int = stage) -> torch.Tensor:
            return encoder.reroll(t, stage_idx=stage).permute(0, 3, 1, 2)

        targets = [ClassifierOutputTarget(1)] * len(x)
        module = model.get_submodule(layer)
        with pgc.GradCAM(_Logits(model), [module], reshape_transform=reroll) as cam:
            ref = cam(x, targets=targets)
        got = np.asarray(res.heatmaps).reshape(len(x), 64, 64)
        for i in range(len(x)):
            r = np.corrcoef(ref[i].ravel(), got[i].ravel())[0, 1]
            assert r > 0.99, (layer, i, r)


def test_hf_hiera_tokens_of_an_unknown_order_are_refused() -> None:
    """Tokens of an unrolled stage that the model's reroll does not fit (another input size)
    are refused in one line, not reshaped row by row."""
    from netlens.activations import to_spatial

    model = _hf_hiera()
    t = torch.randn(1, 64, 8)  # 8×8 tokens; stage 0 of a 64-px input has 16×16
    with pytest.raises(AnalyzerError, match="mask-unit order"):
        to_spatial(t, model, "hiera.encoder.stages.0.layers.0.mlp", 1, (32, 32))


def _hf_swin() -> torch.nn.Module:
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=4,
        num_labels=3,
    )
    return T.SwinForImageClassification(cfg).eval()


def test_swin_window_attention_advice_names_a_layer_that_works() -> None:
    """A window-attention layer was refused with "pick the block or stage around it", both of
    which return tuples and were refused too ("pick a module inside it"): a circle. The advice
    now names the block's layers on the whole grid, and the first of them gives Grad-CAM."""
    model = _hf_swin()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    inner = [
        n
        for n, m in model.named_modules()
        if n.startswith("swin.encoder.layers.0.blocks.0.attention.")
        and isinstance(m, torch.nn.Linear)
    ][-1]
    with pytest.raises(AnalyzerError) as err:
        netlens.cam(model, x, layer=inner, target=1)
    message = str(err.value)
    assert "block or stage around it" not in message
    named = message.split("'")[3::2][:2]  # the layers the advice names: the block, then its
    assert named == [  # first layer on the whole grid
        "swin.encoder.layers.0.blocks.0",
        "swin.encoder.layers.0.blocks.0.layernorm_after",
    ]
    for layer in named:
        res = netlens.cam(model, x, layer=layer, target=1)
        assert float(np.asarray(res.heatmaps).std()) > 0


def _padded_vit() -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=64,
        num_classes=3,
        depth=1,
        dynamic_img_size=True,
        dynamic_img_pad=True,
    ).eval()
    with torch.no_grad():  # every channel: the sum of its patch's pixels
        model.patch_embed.proj.weight.fill_(1.0)
        model.patch_embed.proj.bias.zero_()
    return model


def test_features_overlay_puts_a_padded_grid_patch_on_its_pixels() -> None:
    """A dynamically padded ViT's 4×5 patches cover 64×80 of a 50×70 input; the overlay
    stretched the map over 50×70, so the patch (3, 4) at pixels [48:50, 64:70] showed up
    around (44, 63). features now carries the patch stride and the overlay uses it."""
    from netlens.render.grids import fit_map, overlay_tiles

    model = _padded_vit()
    x = torch.zeros(1, 3, 50, 70)
    x[:, :, 48:, 64:] = 2.0  # only patch (3, 4) sees anything
    res = netlens.Lens(model).features(x, "patch_embed", top=1)
    assert res.meta["strides"]["patch_embed"] == [16, 16]
    maps = res.arrays["patch_embed:maps"][0]
    assert maps.shape[-2:] == (4, 5)
    big, covered = fit_map(maps[0] / maps[0].max(), (50, 70), res.meta["strides"]["patch_embed"])
    assert covered.all()
    grid = torch.as_tensor(maps[:1] / maps[0].max())[None]  # the padded 64×80, then cut
    ref = torch.nn.functional.interpolate(grid, size=(64, 80), mode="bilinear")[0, 0, :50, :70]
    np.testing.assert_allclose(big, ref.numpy(), atol=1e-5)
    y, xx = np.unravel_index(int(np.argmax(big)), big.shape)
    assert y >= 48 and xx >= 64
    image = np.zeros((50, 70, 3), dtype=np.uint8)
    tiles = overlay_tiles(maps[:1] / maps[0].max(), image, alpha=1.0, stride=[16, 16])
    red = tiles[0, ..., 0] - tiles[0, ..., 2]  # jet: red at the top of the scale
    ry, rx = np.unravel_index(int(np.argmax(red)), red.shape)
    assert ry >= 48 and rx >= 64


def test_features_meta_has_no_stride_for_a_cnn() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    res = netlens.Lens(model).features(torch.randn(1, 3, 16, 16), "0", top=1)
    assert res.meta["strides"] == {"0": None}
