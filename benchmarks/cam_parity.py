"""How closely netlens' CAMs agree with pytorch-grad-cam's: Pearson r per method and image.

timm resnet18 with random weights and randomised BatchNorm, layer4, scikit-image photos at
128², the predicted class as target (Score-CAM and Ablation-CAM on one photo). Each method is
compared with the peer as it ships ("as is") and with netlens' deliberate differences taken out
through the peer's own code ("like for like", what ``tests/test_cam_parity.py`` asserts):
Score-CAM masks upsampled with half-pixel centres, Eigen-CAM with pytorch-grad-cam's own
Seg-Eigen-CAM sign correction, Grad-CAM++ with the classifier scaled by 100 (so that the 1e-6
pytorch-grad-cam adds to a denominator of size g² does not matter). The last line sums up.

    python benchmarks/cam_parity.py

Needs the ``bench`` extras (grad-cam, scikit-image).
"""

from __future__ import annotations

import copy
import warnings
from unittest import mock

import numpy as np
import pytorch_grad_cam as pgc
import timm
import torch
import torch.nn.functional as F
from pytorch_grad_cam import eigen_cam
from pytorch_grad_cam.utils import svd_on_activations
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage import data as skdata
from torch import nn

import netlens

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
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def photos(names: tuple[str, ...], size: int = 128) -> torch.Tensor:
    out = []
    for name in names:
        img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float() / 255
        img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True)[0]
        out.append((img - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out)


class HalfPixelUpsample(nn.Upsample):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__(size=size, mode="bilinear", align_corners=False)


def correlations(method: str, model: nn.Module, x: torch.Tensor, like: bool) -> list[float]:
    if like and method == "gradcam++":
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.fc.weight.mul_(100.0)
    with torch.no_grad():
        targets = model(x).argmax(dim=1).tolist()
    ours = netlens.cam(model, x, method=method, layer="layer4", target=targets, batch_size=64)
    patches = []
    if like and method == "scorecam":
        patches.append(mock.patch.object(torch.nn, "UpsamplingBilinear2d", HalfPixelUpsample))
    if like and method == "eigencam":
        fixed = svd_on_activations.get_2d_projection_with_sign_correction
        patches.append(mock.patch.object(eigen_cam, "get_2d_projection", fixed))
    for p in patches:
        p.start()
    try:
        with getattr(pgc, PEERS[method])(model=model, target_layers=[model.layer4]) as peer:
            peer.batch_size = 64
            ref = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        for p in patches:
            p.stop()
    pairs = zip(ours.heatmaps, ref, strict=True)
    return [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in pairs]


def main() -> None:
    warnings.filterwarnings("ignore")
    model = resnet18()
    many, one = photos(("astronaut", "coffee", "chelsea", "rocket")), photos(("chelsea",))
    print(f"{'method':<12}{'r as is (min)':>15}{'r like for like (min)':>24}")
    summary = []
    for method in PEERS:
        x = one if method in ("scorecam", "ablationcam") else many
        raw = min(correlations(method, model, x, like=False))
        like = min(correlations(method, model, x, like=True))
        print(f"{method:<12}{raw:>15.4f}{like:>24.4f}", flush=True)
        summary.append(f"{method} {like:.4f}")
    print("summary (min Pearson r, like for like): " + "; ".join(summary))


if __name__ == "__main__":
    main()
