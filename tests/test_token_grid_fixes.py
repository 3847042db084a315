"""Token grids, built input sizes and patch cells of ViT-like models.

- Hugging Face DeiT/ViT on wide inputs with one or two rows of patches: the grid comes from
  the patch embedding's convolution and the prefix tokens from the model (not an aspect guess
  that takes the class and distillation tokens for patches).
- Models built for another input size (torchvision ``image_size=``, timm ``img_size=``) are
  fed at that size; top-activations sizes its dry forward by the data, as features does.
- top-activations' cells of a timm ViT with ``dynamic_img_pad`` are its patches, from the
  top left, clipped to the image.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import netlens

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:model records no preprocessing"),
]

T = pytest.importorskip("transformers")


def _hooked(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    outs: list[torch.Tensor] = []
    h = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: outs.append((o[0] if isinstance(o, tuple) else o).detach())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return outs[0]


def _hf_deit(h: int, w: int) -> nn.Module:
    torch.manual_seed(0)
    config = T.DeiTConfig(
        image_size=[h, w],
        patch_size=16,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return T.DeiTForImageClassificationWithTeacher(config).eval()


def _hf_vit(h: int, w: int) -> nn.Module:
    torch.manual_seed(0)
    config = T.ViTConfig(
        image_size=[h, w],
        patch_size=16,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return T.ViTForImageClassification(config).eval()


# (model, input size, layer, prefix tokens the reference drops)
WIDE = [
    pytest.param(_hf_deit, (32, 128), "deit.layernorm", 2, id="deit-2x8"),
    pytest.param(_hf_vit, (16, 128), "vit.layernorm", 1, id="vit-1x8"),
]


@pytest.mark.parametrize(("make", "hw", "layer", "prefix"), WIDE)
def test_hugging_face_wide_inputs_drop_exactly_the_prefix_tokens(make, hw, layer, prefix):  # noqa: ANN001
    model = make(*hw)
    x = torch.randn(4, 3, *hw, generator=torch.Generator().manual_seed(1))
    gh, gw = hw[0] // 16, hw[1] // 16
    tokens = _hooked(model, layer, x)
    ref = tokens[:, prefix:].reshape(4, gh, gw, -1).permute(0, 3, 1, 2)
    lens = netlens.load(model)
    feats = lens.features(x, layer=layer, top=3)
    assert feats.meta["shapes"][layer] == [4, ref.shape[1], gh, gw]
    np.testing.assert_allclose(feats.arrays[f"{layer}:means"], ref.mean((2, 3)), atol=1e-5)
    top = lens.run("top-activations", (x, torch.zeros(4, dtype=torch.long)), layer=layer, k=2)
    assert top.meta["map_size"] == [gh, gw]
    peak, where = ref.reshape(4, ref.shape[1], -1).max(2)
    for row in top.table:
        s, ch = row["sample"], row["channel"]
        assert (row["y"], row["x"]) == divmod(int(where[s, ch]), gw)
        assert row["score"] == pytest.approx(float(peak[s, ch]), rel=1e-4, abs=1e-5)


def test_hugging_face_deit_wide_gradcam_matches_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _hf_deit(32, 128)
    x = torch.randn(2, 3, 32, 128, generator=torch.Generator().manual_seed(2))
    layer = "deit.layers.0.layernorm_before"
    mine = netlens.cam(model, x, method="gradcam", layer=layer, target=[0, 2])

    class Logits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.inner(t).logits

    def grid(t: torch.Tensor) -> torch.Tensor:  # class and distillation tokens dropped: 2×8
        return t[:, 2:, :].reshape(t.size(0), 2, 8, t.size(2)).permute(0, 3, 1, 2)

    target = [model.get_submodule(layer)]
    with pgc.GradCAM(model=Logits(model), target_layers=target, reshape_transform=grid) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (0, 2)])
    lo, hi = ref.min(axis=(1, 2), keepdims=True), ref.max(axis=(1, 2), keepdims=True)
    assert mine.heatmaps.shape == (2, 32, 128) and ref.std() > 0.05
    np.testing.assert_allclose(mine.heatmaps, (ref - lo) / (hi - lo), atol=2e-4)


def test_a_token_layer_without_a_patch_embedding_prefers_the_exact_aspect() -> None:
    from netlens.activations import _token_layout

    # 18 tokens of a 32×128 input: 2 prefix tokens + 2×8 (exact 1:4), not 2×9 (about 1:4)
    assert _token_layout(nn.Identity(), 18, (32, 128)) == (2, 2, 8)
    assert _token_layout(nn.Identity(), 17, (32, 128)) == (1, 2, 8)
    assert _token_layout(nn.Identity(), 16, (32, 128)) == (0, 2, 8)


# -- models built for another input size ---------------------------------------------------
def _runs(model: nn.Module, size: tuple[int, int]) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
    except Exception:  # noqa: BLE001 - the reference: does the model take this size
        return False
    return True


def _tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    ).eval()  # fmt: skip


def test_torchvision_vit_built_for_64_is_fed_64(tmp_path) -> None:  # noqa: ANN001
    model = _tv_vit()
    assert _runs(model, (64, 64)) and not _runs(model, (224, 224))
    lens = netlens.load(model)
    assert lens.input_size == (3, model.image_size, model.image_size)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)).save(photo)
    feats = lens.features(str(photo), top=2)
    (shape,) = feats.meta["shapes"].values()
    assert shape[-2:] == [4, 4]
    x = torch.randn(3, 64, 64)[None].repeat(3, 1, 1, 1)
    top = lens.run("top-activations", (x, torch.zeros(3, dtype=torch.long)), k=1, max_channels=1)
    assert top.meta["map_size"] == [4, 4]


def test_top_activations_sizes_its_dry_forward_by_the_data() -> None:
    model = _tv_vit()
    lens = netlens.load(model, input_size=(3, 224, 224))  # a wrong size the user gave
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    top = lens.run("top-activations", (x, torch.zeros(3, dtype=torch.long)), k=1, max_channels=1)
    feats = lens.features(x, top=1)
    assert [top.meta["layer"]] == feats.meta["layers"]


TIMM_BUILT = [
    ("coat_lite_tiny", {"img_size": 64}, (64, 64)),
    ("gcvit_xxtiny", {"img_size": (64, 96)}, (64, 96)),
    ("maxvit_nano_rw_256", {"img_size": (64, 96)}, (64, 96)),
    ("levit_128s", {"img_size": 64}, (64, 64)),
]


@pytest.mark.parametrize(("name", "kw", "hw"), TIMM_BUILT, ids=[t[0] for t in TIMM_BUILT])
def test_timm_models_built_for_another_size_are_fed_that_size(name, kw, hw) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kw).eval()
    configured = tuple(model.pretrained_cfg["input_size"][1:])
    assert _runs(model, hw) and not _runs(model, configured)
    assert netlens.load(model).input_size == (3, *hw)


@pytest.mark.parametrize("name", ["levit_128s", "tiny_vit_5m_224"])
def test_timm_models_built_for_their_data_config_keep_it(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    configured = tuple(model.pretrained_cfg["input_size"])
    assert netlens.load(model).input_size == configured


def test_levit_built_for_64_reads_a_photo(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, num_classes=3, img_size=64).eval()
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), np.uint8)).save(photo)
    feats = netlens.load(model).features(str(photo), top=2)
    assert feats.arrays["images"].shape[1:3] == (64, 64)


# -- cells of padded patch grids -------------------------------------------------------------
def _dynpad_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=4, depth=1,
        embed_dim=32, num_heads=2, dynamic_img_size=True, dynamic_img_pad=True,
    ).eval()  # fmt: skip


def test_top_cells_of_a_dynamically_padded_vit_are_its_patches() -> None:
    model = _dynpad_vit()
    x = torch.randn(4, 3, 50, 70, generator=torch.Generator().manual_seed(0))
    lens = netlens.load(model)
    r = lens.run(
        "top-activations", (x, torch.zeros(4, dtype=torch.long)), layer="blocks.0", k=3,
        max_channels=4,
    )  # fmt: skip
    assert r.meta["map_size"] == [4, 5]  # ceil(50/16) × ceil(70/16), padded bottom and right
    cells = r.arrays["cells"].reshape(-1, 4)
    for row, cell in zip(r.table, cells, strict=True):
        y, xx = row["y"], row["x"]
        assert cell.tolist() == [16 * y, 16 * xx, min(16 * y + 16, 50), min(16 * xx + 16, 70)]


def test_top_cells_of_a_cnn_still_spread_over_the_input() -> None:
    from netlens.analyzers.top_activations import _cell

    assert _cell((1, 3), (4, 5), (50, 70)) == [12, 42, 25, 56]
    assert _cell((1, 3), (4, 5), (50, 70), (16, 16)) == [16, 48, 32, 64]
    assert _cell((3, 4), (4, 5), (50, 70), (16, 16)) == [48, 64, 50, 70]
