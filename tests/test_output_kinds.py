"""Outputs as other people's models return them: probabilities (a model ending in ``Softmax``),
one logit (binary, trained with ``BCEWithLogitsLoss``), N×K×1×1 (a fully convolutional head), a
dict (Hugging Face style) — through ``cam``, ``evaluate`` and ``ablate``, checked against
numbers computed by hand from the model's own output."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from hostile_inputs import assert_one_clean_line
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.targets import are_probabilities, as_logits

runner = CliRunner()


def body() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1)
    )


class SoftNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = body()
        self.fc = nn.Linear(16, 4)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.fc(self.features(x).relu().mean((2, 3))))


class BinNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = body()
        self.fc = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).relu().mean((2, 3)))


class ConvHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = body()
        self.cls = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.features(x).relu()).mean((2, 3), keepdim=True)


class SigNet(BinNet):
    """A binary model trained with ``BCELoss``: its output is σ(z), by an ``nn.Sigmoid``."""

    def __init__(self) -> None:
        super().__init__()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(super().forward(x))


class MultiSig(SoftNet):
    """A multi-label model: four labels, each its own ``torch.sigmoid`` probability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.features(x).relu().mean((2, 3))))


class DictNet(BinNet):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"features": f, "logits": self.fc(f.relu().mean((2, 3)))}


def made(cls: type[nn.Module], scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    if hasattr(model, "fc"):
        model.fc.weight.data *= scale
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple:
    """Four scikit-image photos in two class folders, ``neg`` and ``pos``."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    pics = {"neg": [data.chelsea(), data.coffee()], "pos": [data.astronaut(), data.rocket()]}
    for label, images in pics.items():
        (root / label).mkdir()
        for i, img in enumerate(images):
            cv2.imwrite(str(root / label / f"{label}{i}.png"), cv2.resize(img, (48, 48))[..., ::-1])
    return root, sorted(root.glob("*/*.png"))


def test_probability_outputs_are_recognised_and_logits_are_not():
    p = torch.softmax(torch.randn(5, 7) * 4, dim=1)
    assert are_probabilities(p) and torch.allclose(torch.softmax(as_logits(p), 1), p, atol=1e-6)
    logits = torch.randn(64, 7)
    assert not are_probabilities(logits) and not are_probabilities(logits.sigmoid())
    z = torch.randn(6, 1)
    both = torch.softmax(as_logits(z), 1)
    assert torch.allclose(both[:, 1:], z.sigmoid()) and torch.allclose(both.sum(1), torch.ones(6))


def test_a_softmax_model_is_not_softmaxed_again(photos):
    root, files = photos
    model = made(SoftNet, scale=40)
    lens = netlens.Lens(model, {"size": (48, 48)})
    x = lens.preprocess(files)
    with torch.no_grad():
        p = model(x)
    assert float(p.max()) > 0.9  # peaked: a second softmax would give at most 0.48
    assert torch.allclose(lens.predict(files), p, atol=1e-6)
    cam = lens.cam(files)
    rows = cam.rows()
    for i, row in enumerate(rows):
        assert row["probability"] == pytest.approx(float(p[i].max()), abs=1e-5)
    ev = lens.evaluate(root, metrics="deletion", chunk=4)
    start = ev.arrays["gradcam/deletion/curve"][:, 0]
    labels = torch.tensor([0, 0, 1, 1])
    assert np.allclose(start, p[torch.arange(4), labels].numpy(), atol=1e-5)
    ab = lens.ablate(root, mode="zero", metric="loss", layers="features.3")
    loss = float(-p[torch.arange(4), labels].clamp_min(1e-45).log().double().mean())
    assert ab.table[0]["value"] == pytest.approx(loss, rel=1e-5)


def test_a_single_logit_model_through_the_cli(photos, tmp_path):
    root, files = photos
    model = made(BinNet, scale=30)
    path = tmp_path / "bin.pt"
    torch.save(model, path)
    out = tmp_path / "cam"
    img = [str(f) for f in files]
    args = ["cam", str(path), *img, "--trust", "--input-size", "48", "-q", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "cam.json").read_text())["images"]
    lens = netlens.load(path, trust=True, input_size=48)
    with torch.no_grad():
        s = torch.sigmoid(model(lens.preprocess(files)))[:, 0]
    for i, row in enumerate(rows):
        positive = bool(s[i] > 0.5)
        assert row["prediction"] == int(positive)
        assert row["target_name"] == ("positive" if positive else "negative")
        assert row["probability"] == pytest.approx(float(s[i] if positive else 1 - s[i]), abs=1e-5)
        assert (out / row["files"][0]).exists()  # the figure (it crashed on the N×1 scores)
    top = tmp_path / "top"
    res = runner.invoke(app, [*args[:-1], str(top), "--top", "2"])
    assert res.exit_code == 0, res.output
    rows = json.loads((top / "cam.json").read_text())["images"]
    assert all(sorted(r["target"]) == [0, 1] and r["target"][0] == r["prediction"] for r in rows)
    assert all(r["probability"][0] >= 0.5 >= r["probability"][1] for r in rows)
    named = tmp_path / "named"
    res = runner.invoke(
        app, [*args[:-1], str(named), "--classes", "healthy,sick", "--target", "healthy"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((named / "cam.json").read_text())["images"]
    assert [r["target_name"] for r in rows] == ["healthy"] * 4
    assert rows[0]["probability"] == pytest.approx(float(1 - s[0]), abs=1e-5)


def test_a_single_logit_model_is_evaluated_and_ablated_as_two_classes(photos):
    root, files = photos
    model = made(BinNet, scale=30)
    lens = netlens.Lens(model, {"size": (48, 48)}, classes=["neg", "pos"])
    with torch.no_grad():
        s = torch.sigmoid(model(lens.preprocess(files)))[:, 0].double()
    labels = torch.tensor([0, 0, 1, 1])
    p_true = torch.where(labels == 1, s, 1 - s)
    ev = lens.evaluate(root, metrics="insertion,deletion", chunk=4)
    assert np.allclose(ev.arrays["gradcam/deletion/curve"][:, 0], p_true.numpy(), atol=1e-5)
    acc = lens.ablate(root, mode="zero", layers="features.3")
    assert acc.table[0]["value"] == pytest.approx(
        float(((s > 0.5).long() == labels).double().mean())
    )
    loss = lens.ablate(root, mode="zero", metric="loss", layers="features.3")
    assert loss.table[0]["value"] == pytest.approx(float(-p_true.log().mean()), rel=1e-6)


def test_a_pooled_conv_head_is_a_classifier_not_a_one_pixel_map(photos):
    _, files = photos
    model = made(ConvHead)
    lens = netlens.Lens(model, {"size": (48, 48)})
    with torch.no_grad():
        logits = model(lens.preprocess(files)).flatten(1)
    assert torch.allclose(lens.predict(files), torch.softmax(logits, 1), atol=1e-6)
    cam = lens.cam(files)
    assert cam.meta["task"] == "multiclass"
    assert [r["target"] for r in cam.rows()] == logits.argmax(1).tolist()


def test_dict_outputs_are_evaluated_and_a_dense_pick_is_refused(photos, tmp_path):
    root, _ = photos
    model = made(DictNet)
    path = tmp_path / "dict.pt"
    torch.save(model, path)
    base = ["evaluate", str(path), "--data", str(root), "--trust", "--input-size", "48", "-q"]
    out = tmp_path / "ev"
    res = runner.invoke(app, [*base, "--metric", "deletion", "--out", str(out)])
    assert res.exit_code == 0, res.output  # it failed: 'dict' object has no attribute 'float'
    assert (out / "evaluate.json").exists()
    dense = tmp_path / "dense"
    res = runner.invoke(app, [*base, "--output", "features", "--out", str(dense)])
    assert res.exit_code == 1
    assert "--output KEY" in assert_one_clean_line(res.stderr)
    assert not dense.exists()


class TensorTwin(DictNet):
    """DictNet's weights, returning the logits tensor itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)["logits"]


def test_dict_outputs_through_score_cams_folded_passes():
    """Enough masked passes for the conv+BN-folded copy (≥ 128): its dict output is read as
    the model's is (the copy's output was compared with ``.shape`` and failed)."""
    model = made(DictNet)
    twin = made(TensorTwin)
    x = torch.randn(8, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    kw = {"method": "scorecam", "layer": "features.3"}
    got = netlens.Lens(model, {"size": (48, 48)}).cam(x, **kw).heatmaps
    want = netlens.Lens(twin, {"size": (48, 48)}).cam(x, **kw).heatmaps
    assert np.abs(got - want).max() <= 1e-5


def test_a_multilabel_model_is_evaluated_with_sigmoids(photos):
    """Deletion follows σ(z_target) for a multi-label model, not a softmax across labels."""
    root, files = photos
    model = made(DictNet)  # four independent labels
    lens = netlens.Lens(model, {"size": (48, 48)}, task="multilabel")
    with torch.no_grad():
        z = model(lens.preprocess(files))["logits"].double()
    labels = torch.tensor([0, 0, 1, 1])
    ev = lens.evaluate(root, metrics="deletion", chunk=4)
    start = ev.arrays["gradcam/deletion/curve"][:, 0]
    assert np.allclose(start, torch.sigmoid(z[torch.arange(4), labels]).numpy(), atol=1e-5)


def test_a_sigmoid_binary_model_is_read_by_its_logit(photos, tmp_path):
    """σ(z) read as a logit gave σ(σ(z)) ∈ [0.5, 0.73]: every photo "positive", a confident
    negative at 50 %. Maps, probabilities, curves and ablation scores now equal those of the
    same network without its sigmoid."""
    root, files = photos
    sig, bare = made(SigNet, scale=30), made(BinNet, scale=30)
    lens, ref = (netlens.Lens(m, {"size": (48, 48)}, classes=["neg", "pos"]) for m in (sig, bare))
    with torch.no_grad():
        z = bare(lens.preprocess(files))[:, 0].sort().values
        for m in (sig, bare):  # the threshold between the photos: both classes predicted
            m.fc.bias -= float(z[1:3].mean())
        s = sig(lens.preprocess(files))[:, 0].double()
    assert float(s.min()) < 0.3 and float(s.max()) > 0.7  # both classes among the photos
    assert torch.allclose(lens.predict(files).double(), torch.stack([1 - s, s], 1), atol=1e-5)
    cam, cam_ref = lens.cam(files), ref.cam(files)
    assert [r["prediction"] for r in cam.rows()] == (s > 0.5).long().tolist()
    np.testing.assert_allclose(cam.heatmaps, cam_ref.heatmaps, atol=1e-4)
    labels = torch.tensor([0, 0, 1, 1])
    p_true = torch.where(labels == 1, s, 1 - s)
    ev = lens.evaluate(root, metrics="deletion", chunk=4)
    assert np.allclose(ev.arrays["gradcam/deletion/curve"][:, 0], p_true.numpy(), atol=1e-5)
    loss = lens.ablate(root, mode="zero", metric="loss", layers="features.3")
    assert loss.table[0]["value"] == pytest.approx(float(-p_true.log().mean()), rel=1e-4)
    path = tmp_path / "sig.pt"
    torch.save(sig, path)
    out = tmp_path / "cli"
    args = ["cam", str(path), *map(str, files), "--trust", "--input-size", "48", "--out", str(out)]
    res = runner.invoke(app, [*args, "-q"])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "cam.json").read_text())["images"]
    for i, row in enumerate(rows):
        assert row["probability"] == pytest.approx(float(max(s[i], 1 - s[i])), abs=1e-5)


def test_a_sigmoid_multilabel_model_keeps_its_probabilities(photos):
    _, files = photos
    model = made(MultiSig, scale=20)
    lens = netlens.Lens(model, {"size": (48, 48)})
    with torch.no_grad():
        p = model(lens.preprocess(files))
    assert not are_probabilities(p)  # rows do not sum to 1: a softmax was taken over labels
    assert torch.allclose(lens.predict(files), p, atol=1e-5)
    cam = lens.cam(files)
    assert cam.meta["task"] == "multilabel"
    for i, row in enumerate(cam.rows()):
        assert row["probability"] == pytest.approx(float(p[i].max()), abs=1e-5)


def test_a_sigmoid_bounded_regression_keeps_its_values(photos):
    """With ``task="regression"`` a sigmoid output is a bounded score, reported as it is."""
    _, files = photos
    model = made(MultiSig, scale=20)
    lens = netlens.Lens(model, {"size": (48, 48)}, task="regression")
    with torch.no_grad():
        p = model(lens.preprocess(files))
    assert torch.allclose(lens.predict(files), p, atol=1e-6)
    assert torch.allclose(lens.output(lens.preprocess(files)), p)


class SqueezeSig(nn.Module):
    """A multi-label model ending in ``nn.Sigmoid`` that cannot take one image: ``squeeze()``
    before a ``BatchNorm1d`` (fine for batches of two and more)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.bn, self.fc, self.sig = nn.BatchNorm1d(8), nn.Linear(8, 4), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3)).squeeze()
        return self.sig(self.fc(self.bn(x)))


def test_a_sigmoid_model_that_needs_two_images_keeps_its_probabilities():
    torch.manual_seed(0)
    model = SqueezeSig().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        p = model(x)
    lens = netlens.load(model, classes=["a", "b", "c", "d"])
    cam = lens.cam(x, target="a", layer="features.1")
    assert cam.meta["task"] == "multilabel"
    assert torch.allclose(lens.probabilities(lens.output(x)), p, atol=1e-5)
    for i, row in enumerate(cam.rows()):
        assert row["probability"] == pytest.approx(float(p[i, 0]), abs=1e-5)


class LogitNet(SoftNet):
    """SoftNet's logits, without its softmax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).relu().mean((2, 3)))


def test_a_bfloat16_softmax_model_is_not_softmaxed_again(photos):
    """bfloat16 rounds a softmax's rows to sums of 1 ± 0.002: they were taken for logits and
    softmaxed again (0.18 for the model's 0.75)."""
    _, files = photos
    model = made(SoftNet, scale=30).to(torch.bfloat16)
    lens = netlens.Lens(model, {"size": (48, 48)})
    x = lens.preprocess(files)
    with torch.no_grad():
        p = model(x.to(torch.bfloat16)).float()
    assert (p.sum(1) - 1).abs().max() > 1e-3  # the case: rounding beyond the float32 margin
    assert torch.allclose(lens.predict(files), p, atol=1e-3)


def test_extreme_sigmoid_probabilities_keep_their_maps_and_values(photos):
    """σ⁻¹ was clamped at the dtype's eps: a label at p = 1e-9 got a flat Grad-CAM map (zero
    gradient through the clamp) and a float16 p = 4e-5 read as 6e-5 (float16's smallest normal
    number; 0.0078 as bfloat16's eps)."""
    _, files = photos
    logits = made(LogitNet, scale=10)
    with torch.no_grad():
        logits.fc.bias -= 20  # every label unlikely
    sig = nn.Sequential(logits, nn.Sigmoid()).eval()
    x = netlens.Lens(logits, {"size": (48, 48)}).preprocess(files)
    with torch.no_grad():
        z = logits(x)
    plain = netlens.Lens(logits, {"size": (48, 48)})
    maps = {k: plain.cam(x[:1], target=k, layer="features").heatmaps for k in range(4)}
    low = min((k for k in maps if maps[k].std() > 0.01), key=lambda k: float(z[0, k]))
    assert float(torch.sigmoid(z[0, low])) < 1e-7  # beyond float32's eps
    cam = netlens.Lens(sig, {"size": (48, 48)}).cam(x[:1], target=low, layer="0.features")
    assert np.allclose(cam.heatmaps, maps[low], atol=1e-4)
    with torch.no_grad():
        logits.fc.bias += 10
    for dtype in (torch.float16, torch.bfloat16):
        model = nn.Sequential(logits, nn.Sigmoid()).to(dtype)
        with torch.no_grad():
            p = model(x.to(dtype)).float()
        assert float(p.min()) < torch.finfo(dtype).tiny or dtype == torch.bfloat16
        got = netlens.Lens(model, {"size": (48, 48)}).predict(files).float()
        assert torch.allclose(got, p, rtol=1e-2, atol=0), dtype
        model.float()


def test_a_statically_quantized_model_is_explained_without_gradients():
    """torch.ao eager static quantization (torchvision's quantizable ResNet): loading crashed on
    the packed parameters' dtypes, and Score-CAM on the quantized activations."""
    import warnings

    import torchvision.models.quantization as qm

    engines = torch.backends.quantized.supported_engines
    if not {"fbgemm", "qnnpack", "x86"} & set(engines):
        pytest.skip("no quantized engine")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) - 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp = qm.resnet18(num_classes=5, quantize=False).eval()
        q = qm.resnet18(num_classes=5, quantize=False).eval()
        q.load_state_dict(fp.state_dict())
        q.fuse_model()
        q.qconfig = torch.ao.quantization.get_default_qconfig(torch.backends.quantized.engine)
        torch.ao.quantization.prepare(q, inplace=True)
        with torch.no_grad():
            q(x)
        torch.ao.quantization.convert(q, inplace=True)
    lens = netlens.Lens(q)
    got = lens.cam(x, method="scorecam", layer="layer4", target=[0, 1]).heatmaps
    want = netlens.Lens(fp).cam(x, method="scorecam", layer="layer4", target=[0, 1]).heatmaps
    for g, w in zip(got, want, strict=True):
        assert np.corrcoef(g.ravel(), w.ravel())[0, 1] > 0.9  # up to quantisation's rounding
