"""Layers returning ``(hidden_states, …)`` (Hugging Face Swin and Hiera blocks and stages):
the probe keeps the first element as the layer's output, with its gradient, so CAMs of such a
block or stage work, and ``auto`` may pick one (Hiera: its last stage's output, not the MLP
branch of its last block). References: pytorch-grad-cam on a tap of the first element."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean()


class _Net(nn.Module):
    """A tuple-returning block whose first element is rewritten in place downstream."""

    def __init__(self) -> None:
        super().__init__()
        self.pair, self.fc = _Pair(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, extra = self.pair(x)
        return self.fc(torch.relu_(y).mean((2, 3))) + extra


def test_probe_keeps_a_tuples_first_element_and_its_gradient() -> None:
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model.pair.conv(x)
    leaf = want.clone().requires_grad_(True)  # d(out[:, 1].sum())/dy by hand
    (ref,) = torch.autograd.grad(
        (model.fc(torch.relu(leaf).mean((2, 3))) + leaf.mean())[:, 1].sum(), leaf
    )
    with netlens.probe(model, "pair", grads=True, first_of_tuple=True) as p:
        p.compute_grads(model(x)[:, 1].sum())
    assert p["pair"].first
    torch.testing.assert_close(p["pair"].output, want)  # as returned, before relu_
    torch.testing.assert_close(p["pair"].grad, ref)
    with netlens.probe(model, "pair", first_of_tuple=True) as p:  # no grads: guarded too
        model(x)
    torch.testing.assert_close(p["pair"].output, want)
    with netlens.probe(model, "pair") as p:  # the default: the tuple as the module returned it
        model(x)
    assert isinstance(p["pair"].output, tuple) and not p["pair"].first
    torch.testing.assert_close(p["pair"].output[0], want)


def test_tuples_whose_first_element_is_no_map_are_still_refused() -> None:
    class Stats(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.mean(), x  # first element: a scalar

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stats, self.fc = Stats(), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m, y = self.stats(x)
            return self.fc(y.mean((2, 3))) + m

    model = Net().eval()
    with netlens.probe(model, "stats", grads=True, first_of_tuple=True) as p:
        with pytest.raises(NetlensError, match="'stats' returns a tuple"):
            p.compute_grads(model(torch.randn(2, 3, 4, 4))[0, 0])


def _tap(module: nn.Module) -> tuple[nn.Module, Any]:
    """An identity module run on ``module``'s first output element (what pytorch-grad-cam
    hooks when a layer returns a tuple)."""
    tap = nn.Identity()

    def hook(m: nn.Module, i: Any, out: Any) -> Any:
        return (tap(out[0]), *out[1:])

    return tap, module.register_forward_hook(hook)


def _grad_cam_ref(model: nn.Module, module: nn.Module, x: torch.Tensor, targets, reshape) -> Any:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).logits

    tap, handle = _tap(module)
    try:
        with GradCAM(model=Logits(), target_layers=[tap], reshape_transform=reshape) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        handle.remove()


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _tiny_swin() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
        window_size=2, num_labels=4,
    )  # fmt: skip
    return transformers.SwinForImageClassification(cfg).eval()


def _tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    side = int(round(t.shape[1] ** 0.5))
    return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("layer", ["swin.encoder.layers.0", "swin.encoder.layers.0.blocks.1"])
def test_hf_swin_stage_and_block_match_pytorch_grad_cam(layer: str) -> None:
    pytest.importorskip("pytorch_grad_cam")
    model = _tiny_swin()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = netlens.cam(model, x, method="gradcam", target=[1, 3], layer=layer)
        module = dict(model.named_modules())[layer]
        ref = _grad_cam_ref(model, module, x, [1, 3], _tokens_to_grid)
    assert ref.std() > 0.01
    for i in range(2):
        assert _r(mine.heatmaps[i], ref[i]) > 0.999
    from netlens.analyzers.cam_base import capture

    layers = [layer, "swin.embeddings.patch_embeddings.projection"]  # a tensor layer beside it
    cap, _ = capture(model, x, layers, lambda b: model(pixel_values=b).logits, lambda out: [])
    assert cap.first == {layer} and cap.acts[layer].shape[:2] == (
        2,
        16 if "blocks" in layer else 32,
    )


def test_hf_hiera_auto_layer_is_the_last_stage_output_and_matches_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    transformers = pytest.importorskip("transformers")
    from netlens.analyzers.cam_base import cam_layer

    torch.manual_seed(0)
    cfg = transformers.HieraConfig(
        image_size=[64, 64], embed_dim=16, num_heads=[1, 1, 2, 2], depths=[1, 1, 1, 1],
        num_labels=4,
    )  # fmt: skip
    model = transformers.HieraForImageClassification(cfg).eval()
    with torch.no_grad():  # random weights: norms that are not all ones give varied maps
        for n, p in model.named_parameters():
            if "layernorm" in n and n.endswith("weight"):
                p.normal_(1, 0.5, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert cam_layer(model, x[:1]) == "hiera.encoder.stages.3"
    encoder = model.hiera.encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = netlens.cam(model, x, method="gradcam", target=[1, 3])
        ref = _grad_cam_ref(
            model,
            encoder.stages[3],
            x,
            [1, 3],
            lambda t: encoder.reroll(t, stage_idx=3).permute(0, 3, 1, 2),
        )
    assert mine.layer == "hiera.encoder.stages.3"
    assert ref.std() > 0.01
    for i in range(2):
        assert _r(mine.heatmaps[i], ref[i]) > 0.999
