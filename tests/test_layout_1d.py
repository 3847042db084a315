"""3-d outputs are tokens (N×L×C) unless a 1-d convolution, norm or pooling made them N×C×L:
their channels are read on the right axis by `layers`, `stats`, channel ablation and `auto`."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torch import nn

import netlens
from netlens.layers import auto_layer, layer_table


class Rows(nn.Module):
    """A 2-d stem whose map is flattened to N×C×L and run through 1-d layers, then a head;
    and a pooled N×C×1 beside token layers (Hugging Face Swin's ``pooler``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 4, stride=4)
        self.c1 = nn.Conv1d(6, 12, 3, padding=1)
        self.bn = nn.BatchNorm1d(12)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.c1(self.stem(x).flatten(2))))  # N×12×64 at 32²
        return self.head(self.pool(h).flatten(1))


@pytest.fixture
def rows() -> netlens.Lens:
    torch.manual_seed(0)
    model = Rows().eval()
    with torch.no_grad():
        model.head.weight *= 20
    return netlens.load(model, size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_layers_stats_and_channel_ablation_read_n_c_l(rows: netlens.Lens) -> None:
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layouts = {r.name: r.layout for r in layer_table(rows.model, x[:1])}
    assert layouts == {"stem": "NCHW", "c1": "NCL", "bn": "NCL", "act": "NCL", "pool": "NCL",
                       "head": ""}  # fmt: skip
    stats = rows.run("stats", (x, torch.zeros(6, dtype=torch.long)), layers="act")
    with torch.no_grad():
        out = rows.model.act(rows.model.bn(rows.model.c1(rows.model.stem(x).flatten(2))))
    dead = (out <= 0).all(dim=0).all(dim=1).double().mean().item()  # per channel (axis 1)
    assert stats.table[0]["channels"] == 12
    assert stats.table[0]["dead_channels"] == pytest.approx(dead)
    y = rows.model(x).argmax(1)
    r = netlens.ablate(rows.model, (x, y), layers="act", channels=True, metric="kl",
                       resamples=10, progress=False, points=3)  # fmt: skip
    singles = [t for t in r.rows if t["kind"] == "channel"]
    assert len(singles) == 12
    base = torch.log_softmax(rows.model(x), 1)
    for t in singles[:4]:  # a naive reference: that channel of act's output zeroed
        hook = rows.model.act.register_forward_hook(
            lambda m, i, o, c=t["channel"]: o.index_fill(1, torch.tensor([c]), 0.0)
        )
        with torch.no_grad():
            z = torch.log_softmax(rows.model(x), 1)
        hook.remove()
        kl = (base.exp() * (base - z)).sum(1).mean().item()
        assert t["value"] == pytest.approx(kl, rel=1e-5, abs=1e-7)


def test_a_pooled_n_c_1_is_not_a_token_grid() -> None:
    """An N×C×1 pooling output whose C is a square (1024 in Swin-base) was read as C tokens of
    one channel on a 32×32 "map", and ``auto`` chose it over the last stage."""

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 64, 8, stride=8)
            self.norm = nn.LayerNorm(64)
            self.pooler = nn.AdaptiveAvgPool1d(1)
            self.head = nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.norm(self.embed(x).flatten(2).transpose(1, 2))  # N×16×64 tokens
            return self.head(self.pooler(t.transpose(1, 2)).flatten(1))  # pooled N×64×1

    model = Pooled().eval()
    assert auto_layer(model, torch.zeros(1, 3, 32, 32)) == "norm"
    lens = netlens.load(model, size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(netlens.errors.AnalyzerError, match="N×C×L"):
        lens.run("features", torch.rand(1, 3, 32, 32), layer="pooler")


def test_a_dynamic_size_vit_reads_its_grid_from_the_input() -> None:
    """timm's ``dynamic_img_size``: 208×240 at patch 16 is 13×15 patches and a class token,
    196 tokens, which the default 14×14 grid also takes, with the class token as a patch."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, dynamic_img_size=True, depth=2
    ).eval()
    lens = netlens.load(vit, size=(208, 240))
    x = torch.randn(1, 3, 208, 240)
    feats = lens.run("features", x, layer="blocks.1", channels="0,5,7")
    assert feats.arrays["blocks.1:maps"].shape == (1, 3, 13, 15)
    with torch.no_grad():
        tokens = vit.blocks(vit._pos_embed(vit.patch_embed(x)))  # the reference: drop the class
    want = tokens[0, 1:].reshape(13, 15, -1).permute(2, 0, 1)[[0, 5, 7]]
    got = torch.as_tensor(feats.arrays["blocks.1:maps"][0])
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_auto_picks_the_last_block_of_a_dynamic_size_vit_on_a_non_square_input() -> None:
    """96×160 at patch 16 is 6×10 patches and a class token: 61 tokens, which no square grid
    takes; the blocks are a patch grid all the same, not the patch embedding before them."""
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, dynamic_img_size=True, depth=2
    ).eval()
    x = torch.randn(1, 3, 96, 160)
    cam = netlens.load(vit, size=(96, 160)).cam(x, target=0)
    assert cam.layer == "blocks.1.norm1"
    assert cam.heatmaps.shape[-2:] == (96, 160)


def test_hiera_stages_are_read_in_place_not_in_mask_unit_order() -> None:
    """timm Hiera keeps the tokens of every stage but the last in mask-unit order: a block's
    maps are its tokens put back by the model's own reroll (timm's forward_intermediates), and
    so are a layer's inside a block (norm1 of a stage's first block sees the stage before)."""
    torch.manual_seed(0)
    hiera = timm.create_model("hiera_tiny_224", pretrained=False, num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ends = hiera.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        norm1 = hiera.blocks[1].norm1(ends[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    lens = netlens.load(hiera)
    for layer, want in (("blocks.0", ends[0]), ("blocks.2", ends[1]), ("blocks.1.norm1", norm1)):
        feats = lens.run("features", x, layer=layer, channels="0,5,7")
        got = torch.as_tensor(feats.arrays[f"{layer}:maps"][0])
        torch.testing.assert_close(got, want[0, [0, 5, 7]].float(), rtol=1e-4, atol=1e-5)


class SharedMixed(nn.Module):
    """One GELU module run on a conv map (N×C×H×W) and inside a channels-last MLP (N×H×W×3C)."""

    def __init__(self, c: int = 12) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 3 * c)
        self.fc2 = nn.Linear(3 * c, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))  # act@0: N×12×8×8
        y = self.fc2(self.act(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))  # act@1: N×8×8×36
        return self.head((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


def test_a_module_run_on_both_layouts_is_read_by_call() -> None:
    torch.manual_seed(0)
    lens = netlens.load(SharedMixed().eval(), size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    lens.output(x[:1])  # the output check, whose forward learns the layouts
    act = next(r for r in lens.layers() if r.name == "act")
    assert act.layout == "NCHW/NHWC"
    rows = {
        r["layer"]: r for r in lens.run("stats", (x, torch.zeros(4).long()), layers="act").table
    }
    assert rows["act@0"]["channels"] == 12 and rows["act@1"]["channels"] == 36
    feats = lens.run("features", x[:1], layer="act@1", channels="0,35")
    assert feats.arrays["act@1:maps"].shape == (1, 2, 8, 8)


def test_a_layer_kept_under_a_second_name_is_found_by_it() -> None:
    """``self.target_layer = self.backbone.layer4`` (as Grad-CAM tutorials set it): the module is
    listed once, under its first name, and ``layer="target_layer"`` was "no layer"."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
            self.fc = nn.Linear(8, 3)
            self.target_layer = self.backbone[1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.backbone(x).mean((2, 3)))

    x = torch.randn(1, 3, 16, 16)
    cam = netlens.cam(Net().eval(), x, layer="target_layer")
    assert cam.layer == "backbone.1"


def test_auto_in_one_member_of_an_ensemble_says_so() -> None:
    """An ensemble averaging two networks' logits: ``auto`` chose the last member's layer and
    its map explained that member alone (r −0.9 against the ensemble's Grad-CAM on one photo),
    without a word. Branches run one after another (a ResNet's blocks) are not siblings."""
    import torchvision

    from netlens.errors import NetlensWarning

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList(
                torchvision.models.resnet18(num_classes=3) for _ in range(2)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return sum(m(x) for m in self.members) / 2

    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(NetlensWarning, match=r"inside members.1; members.0 runs beside it"):
        cam = netlens.cam(Ensemble().eval(), x)
    assert cam.layer == "members.1.layer4"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)
        assert netlens.cam(torchvision.models.resnet18(num_classes=3).eval(), x).layer == "layer4"
