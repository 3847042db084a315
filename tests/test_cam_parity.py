"""Parity with pytorch-grad-cam for every method both have, on a resnet18 and real photos.

The model is timm's resnet18 with random weights and randomised BatchNorm statistics and affine
parameters (timm zero-initialises the last BatchNorm of each residual branch, which would make
the blocks identities); the images are scikit-image's photos. Maps agree when their Pearson
correlation is at least 0.999. Where netlens deliberately differs, the peer is run with that
difference taken out, through its own code:

- Score-CAM: pytorch-grad-cam upsamples the masks with ``align_corners=True``; it is run with
  half-pixel upsampling, as the authors' code and netlens do.
- Eigen-CAM: pytorch-grad-cam keeps whatever sign the SVD returns; it is run with its own
  Seg-Eigen-CAM sign correction (``get_2d_projection_with_sign_correction``), as netlens is.
- Ablation-CAM: netlens divides by ``|y|``; the targets are classes with a positive logit, where
  that is pytorch-grad-cam's ``y``.
- Grad-CAM++: pytorch-grad-cam adds 1e-6 to the denominator of ``g² / (2g² + ΣA·g³)``, which is
  not small next to ``g²`` for this model's gradients (about 1e-3); netlens computes the exact
  ``1 / (2 + ΣA·g)``. Both run on the model with its classifier scaled by 100, where the
  gradients are large enough for the 1e-6 not to matter.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_cam_reference import randomized_resnet18
from torch import nn

import netlens

pgc = pytest.importorskip("pytorch_grad_cam", reason="parity needs the bench extras (grad-cam)")
skdata = pytest.importorskip("skimage.data", reason="parity needs scikit-image's photos")

PEERS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "ablationcam": "AblationCAM",
}
SIZE = 128
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photos(names: tuple[str, ...]) -> torch.Tensor:
    """scikit-image photos, resized (antialiased) and normalised as for ImageNet."""
    out = []
    for name in names:
        img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float() / 255
        img = F.interpolate(img[None], size=(SIZE, SIZE), mode="bilinear", antialias=True)[0]
        out.append((img - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return randomized_resnet18()


class HalfPixelUpsample(nn.Upsample):
    """``nn.UpsamplingBilinear2d`` with half-pixel centres (``align_corners=False``)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__(size=size, mode="bilinear", align_corners=False)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("method", sorted(PEERS))
def test_maps_agree_with_pytorch_grad_cam(
    method: str, resnet: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    names = ("chelsea",) if method in ("scorecam", "ablationcam") else ("astronaut", "coffee")
    x = photos(names)
    if method == "gradcam++":
        resnet = copy.deepcopy(resnet)
        with torch.no_grad():
            resnet.fc.weight.mul_(100.0)
    with torch.no_grad():
        targets = resnet(x).argmax(dim=1).tolist()  # positive logits (see Ablation-CAM)
    if method == "scorecam":
        monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", HalfPixelUpsample)
    if method == "eigencam":
        from pytorch_grad_cam import eigen_cam
        from pytorch_grad_cam.utils import svd_on_activations as svd

        fixed = svd.get_2d_projection_with_sign_correction
        monkeypatch.setattr(eigen_cam, "get_2d_projection", fixed)
    ours = netlens.cam(resnet, x, method=method, layer="layer4", target=targets, batch_size=64)
    with getattr(pgc, PEERS[method])(model=resnet, target_layers=[resnet.layer4]) as peer:
        peer.batch_size = 64
        ref = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    for mine, theirs in zip(ours.heatmaps, ref, strict=True):
        assert theirs.std() > 0.1  # a real map, not a blank
        assert pearson(mine, theirs) >= 0.999, method
