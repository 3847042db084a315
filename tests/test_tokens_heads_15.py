"""A ViT's tokens (N×197×192 at 224 px, N×65×64 at 64 px: about the input's aspect) refused as
tokens, not explained as a segmentation; a detector's raw head refused without a false
segmentation warning; YOLOX's detection score named in the row-per-anchor advice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.callable_output import not_image_maps
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _x(size: int, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


class Tokens(nn.Module):
    """A ViT's patch embedding and its extra tokens (cls, registers): N×(patches + extra)×dim."""

    def __init__(self, patch: int, dim: int, extra: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.extra = nn.Parameter(torch.randn(1, extra, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.extra.expand(len(x), -1, -1), t], 1)


# -- A. tokens about the input's aspect ---------------------------------------------------------
@pytest.mark.parametrize(("size", "patch", "dim"), [(224, 16, 192), (64, 8, 64)])
def test_tokens_about_the_inputs_aspect_are_refused_as_tokens(size, patch, dim) -> None:  # noqa: ANN001
    with pytest.raises(
        NetlensError,
        match=f"{size // patch * (size // patch) + 1} tokens of a patch-{patch} backbone",
    ) as e:
        netlens.Lens(Tokens(patch, dim).eval()).cam(_x(size), layer="embed")
    assert "detector" not in str(e.value) and "\n" not in str(e.value)


def test_a_timm_vits_tokens_are_refused() -> None:
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=0,
        global_pool="",
    )  # fmt: skip
    with pytest.raises(NetlensError, match="tokens"):
        netlens.Lens(vit.eval()).cam(_x(64), layer="blocks.0")


def test_tokens_as_many_as_a_heads_anchors_are_not_only_called_a_head() -> None:
    """A 32 px patch-8 ViT with 4 registers: 16 + 5 = 21 tokens, a YOLO head's anchors at 32 px."""
    with pytest.raises(NetlensError) as e:
        netlens.Lens(Tokens(8, 64, extra=5).eval()).cam(_x(32), layer="embed")
    assert "tokens" in str(e.value) and "\n" not in str(e.value)


def test_maps_of_the_image_at_a_stride_are_not_tokens() -> None:
    out, x = torch.rand(1, 1, 28, 28), _x(224)
    assert not_image_maps(out, x) is None
    assert not_image_maps(torch.rand(1, 1, 16, 16), _x(64)) is None  # 16 = 64 / 4 (p16 tokens)


# -- B. no segmentation warning about a detector's head -----------------------------------------
class V5(nn.Module):
    """YOLOv5's head, a row per anchor (its boxes decoded out of the sigmoid, so not every
    value is in [0, 1]): N×252×8 at 64 px (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p = nn.ModuleList(nn.Conv2d(3, 24, s, stride=s) for s in (8, 16, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [c(x).view(len(x), 3, 8, -1).permute(0, 1, 3, 2).sigmoid() for c in self.p]
        y = torch.cat([r.reshape(len(x), -1, 8) for r in rows], 1)
        return torch.cat([y[..., :2] * 2, y[..., 2:4] * 4, y[..., 4:]], 2)


@pytest.mark.parametrize("target", [lambda out: out[:, 5, 5 + 1], None])
def test_a_detectors_head_is_not_warned_about_as_a_segmentation(target) -> None:  # noqa: ANN001
    lens = netlens.Lens(V5().eval())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            r = lens.cam(_x(64, n=2), layer="p.0", target=target)
            assert np.isfinite(r.heatmaps).all()
        except NetlensError as e:
            assert target is None and "detector" in str(e)
    assert not [i for i in w if "segmentation" in str(i.message)]


def test_a_positive_one_channel_map_is_still_warned_about() -> None:
    class Depth(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x).exp()[:, 0]

    with pytest.warns(netlens.errors.NetlensWarning, match="binary segmentation"):
        netlens.Lens(Depth().eval()).cam(_x(16), layer="c")


# -- C. YOLOX's detection score -----------------------------------------------------------------
def test_the_row_per_anchor_advice_names_the_top_class_and_yoloxs_score() -> None:
    why = not_image_maps(torch.rand(1, 1, 84, 7), _x(64))
    assert why is not None and "\n" not in why
    assert "the top class score, out[..., 4:].amax(dim=(1, 2))" in why
    assert "(out[..., 4:5] * out[..., 5:]).amax(dim=(1, 2))" in why
