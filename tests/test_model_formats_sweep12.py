"""Model formats (sweep 12): torch.ao quantization observers held still by netlens' forwards
(QAT fake-quant and PTQ calibration observers), and the weight-averaging wrappers (SWA's
AveragedModel, timm's ModelEmaV2/V3) explained as the network they average."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

import netlens
from netlens.layers import eval_mode
from netlens.models.wrappers import unwrap

pytestmark = [pytest.mark.usefixtures("one_thread")]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def _images(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _prepared(kind: str) -> nn.Module:
    """A QAT-prepared (fake-quant) or PTQ-prepared (histogram observers) model, calibrated on a
    few batches, then put in eval mode by its user."""
    torch.manual_seed(0)
    m = Net()
    if kind == "qat":
        m.train()
        m.qconfig = tq.get_default_qat_qconfig("x86")
        tq.prepare_qat(m, inplace=True)
    else:
        m.eval()
        m.qconfig = tq.get_default_qconfig("x86")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq.prepare(m, inplace=True)
    with torch.no_grad():
        for s in range(3):
            m(_images(4, s))
    return m.eval()


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _assert_same_state(before: dict[str, torch.Tensor], m: nn.Module) -> None:
    after = m.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"{len(changed)} entries changed, e.g. {changed[:3]}"


def _plain_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int):
    """Grad-CAM with plain hooks, min-max normalised per image, at the input size."""
    acts = {}
    h = layer.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    out = model.eval()(x.clone().requires_grad_(True))
    h.remove()
    (g,) = torch.autograd.grad(out[:, target].sum(), acts["a"])
    cam = F.relu((g.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.amin((1, 2), keepdim=True)
    return (cam / cam.amax((1, 2), keepdim=True).clamp_min(1e-12)).detach().numpy()


def test_qat_gradcam_equals_the_frozen_observer_reference_and_changes_no_state() -> None:
    m = _prepared("qat")
    frozen = copy.deepcopy(m)
    frozen.apply(tq.disable_observer)
    x = _images(2, 7, scale=3.0)  # brighter than calibration: live observers would move
    ref = _plain_gradcam(frozen, frozen.conv2, x, 1)
    before = _state(m)
    res = netlens.load(m).cam(x, method="gradcam", layer="conv2", target=1)
    np.testing.assert_allclose(np.asarray(res.heatmaps), ref, atol=1e-5)
    _assert_same_state(before, m)
    probe = _images(1, 11)
    now = copy.deepcopy(m).apply(tq.disable_observer)
    with torch.no_grad():  # the model computes what it computed before
        assert torch.equal(now(probe), frozen(probe))


_CALLS = {
    "scorecam": lambda lens, x, y: lens.cam(x[:1], method="scorecam", layer="conv2", target=1),
    "features": lambda lens, x, y: lens.features(x[:1], layer="conv2"),
    "stats": lambda lens, x, y: lens.run("stats", (x, y), batch_size=3),
    "ablate": lambda lens, x, y: lens.ablate(
        (x, y),
        layers="conv2",
        mode="zero",
        metric="loss",
        batch_size=3,
        resamples=20,
        progress=False,
    ),
    "predict": lambda lens, x, y: lens.predict(x),
}


@pytest.mark.parametrize("kind", ["qat", "ptq"])
@pytest.mark.parametrize("call", list(_CALLS))
def test_netlens_calls_leave_a_prepared_model_bit_identical(kind: str, call: str) -> None:
    m = _prepared(kind)
    before = _state(m)
    x, y = _images(6, 5, scale=3.0), torch.arange(6) % 4
    _CALLS[call](netlens.load(m, classes=list("abcd")), x, y)
    _assert_same_state(before, m)


def test_eval_mode_restores_each_observer_flag_and_observers_work_after() -> None:
    m = _prepared("qat")
    m.conv1.weight_fake_quant.disable_observer()  # the user's own choice stays
    flags = {n: int(q.observer_enabled) for n, q in m.named_modules() if hasattr(q, "scale")}
    before = _state(m)
    with eval_mode(m), eval_mode(m):  # nested, as sanity running cam
        with torch.no_grad():
            m(_images(2, 3, scale=5.0))
    _assert_same_state(before, m)
    after = {n: int(q.observer_enabled) for n, q in m.named_modules() if hasattr(q, "scale")}
    assert after == flags and flags["conv1.weight_fake_quant"] == 0
    assert not any("forward" in q.__dict__ for q in m.modules())
    m.train()  # the user's own QAT step still observes
    with torch.no_grad():
        m(_images(2, 3, scale=5.0))
    assert not torch.equal(
        before["fc.activation_post_process.scale"], m.fc.activation_post_process.scale
    )


def _wrappers():
    from timm.utils.model_ema import ModelEmaV2, ModelEmaV3
    from torch.optim.swa_utils import AveragedModel

    return {"AveragedModel": AveragedModel, "ModelEmaV2": ModelEmaV2, "ModelEmaV3": ModelEmaV3}


@pytest.mark.parametrize("name", ["AveragedModel", "ModelEmaV2", "ModelEmaV3"])
def test_averaging_wrappers_are_explained_as_their_network(name: str, tmp_path) -> None:
    import cv2
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    wrapped = _wrappers()[name](copy.deepcopy(net)).eval()
    assert unwrap(wrapped)[1] == [type(wrapped).__name__]
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    bare, lens = netlens.load(net), netlens.load(wrapped)
    assert lens.transform.source == bare.transform.source
    assert "recognised as tv:resnet18" in lens.transform.source
    assert [li.name for li in lens.layers()] == [li.name for li in bare.layers()]
    a = bare.cam(str(img), layer="layer3", target=2)
    b = lens.cam(str(img), layer="module.layer3", target=2)  # a name read off the wrapper
    assert b.meta["layers"] == ["layer3"]
    np.testing.assert_allclose(np.asarray(b.heatmaps), np.asarray(a.heatmaps), atol=1e-6)


def test_a_headless_torchvision_model_does_not_hide_a_dynamically_quantized_one() -> None:
    """Both leave no fc weights in the shapes compared; the headless one (not recognised) was
    cached under the same key, so the quantized one loaded after it lost its preprocessing."""
    import torchvision

    headless = torchvision.models.resnet18(num_classes=10).eval()
    headless.fc = nn.Identity()
    netlens.load(headless)
    float_model = torchvision.models.resnet18(num_classes=10).eval()
    q = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    assert "recognised as tv:resnet18" in netlens.load(q).transform.source
