"""Outputs that are not a plain N×C classifier's logits (sweep 12): sigmoids written other ways
(clamped, ``1 / (1 + exp(-z))``), N×K×1 heads, dense regression (depth), a one-channel
segmentation's region score, a single logit with one class name."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netlens
from netlens.errors import NetlensWarning, TargetError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _x(n: int = 4, size: int = 32) -> torch.Tensor:
    """Noise images, each of another colour cast (so a tiny model tells them apart)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    return x + torch.linspace(-1.5, 1.5, n)[:, None, None, None] * torch.randn(
        1, 3, 1, 1, generator=g
    )


class Body(nn.Module):
    """A tiny CNN: ``features`` (the layer explained), pooled, a linear head of ``k`` logits,
    scaled and shifted so that on :func:`_x` the logits spread over both signs."""

    def __init__(self, k: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, k)
        with torch.no_grad():
            self.fc.weight.mul_(3 / self(_x()).std(0)[:, None])
            self.fc.bias.sub_(self(_x()).median(0).values + 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class Wrap(nn.Module):
    def __init__(self, body: nn.Module, f) -> None:
        super().__init__()
        self.m, self.f = body, f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(self.m(x))


SIGMOIDS = {
    "clamp": lambda t: torch.sigmoid(t).clamp(1e-4, 1 - 1e-4),
    "clamp_min": lambda t: torch.sigmoid(t).clamp(min=1e-6),
    "clamp_min_fn": lambda t: torch.clamp_min(torch.sigmoid(t), 1e-6),
    "clamp_tensor": lambda t: torch.sigmoid(t).clamp(torch.tensor(1e-6), torch.tensor(1 - 1e-6)),
    "centernet": lambda t: torch.clamp(t.sigmoid_(), min=1e-4, max=1 - 1e-4),
    "one_over": lambda t: 1 / (1 + torch.exp(-t)),
    "reciprocal": lambda t: torch.reciprocal(torch.exp(-t) + 1),
    "ones_over": lambda t: torch.ones_like(t) / (1 + torch.exp(-t)),
    "pow": lambda t: (1 + torch.exp(-t)) ** -1,
}


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("name", sorted(SIGMOIDS))
def test_sigmoid_written_other_ways_reads_as_sigmoid(name: str, k: int) -> None:
    """Clamped and written-out sigmoids read back as the model's logit: probabilities equal the
    model's own σ(z) and the task is the bare sigmoid model's (they were read as logits: a
    single logit's every image positive, p ∈ [0.5, 0.55]; a multi-label model softmaxed)."""
    body = Body(k).eval()
    x = _x()
    with torch.no_grad():
        z = body(x)
    want = torch.sigmoid(z).numpy()
    assert (want < 0.5).any() and (want > 0.5).any()
    bare = netlens.load(Wrap(body, torch.sigmoid).eval())
    lens = netlens.load(Wrap(body, SIGMOIDS[name]).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)  # recognised: no warning
        out = lens.output(x)
    bare_out = bare.output(x)
    assert lens.task_for(out) == bare.task_for(bare_out) == ("binary" if k == 1 else "multilabel")
    probs = lens.probabilities(out).numpy()
    got = probs[:, 1] if k == 1 else probs
    np.testing.assert_allclose(got, want[:, 0] if k == 1 else want, atol=1e-6)
    r = lens.cam(x, method="gradcam", layer="m.features")
    np.testing.assert_allclose(
        r.probs, bare.cam(x, method="gradcam", layer="m.features").probs, atol=1e-6
    )


@pytest.mark.parametrize(
    "f", [lambda t: 2 / (1 + torch.exp(-t)) / 2.5, lambda t: 1 / (3 + torch.exp(-t))]
)
def test_not_a_sigmoid_is_not_read_as_one(f) -> None:
    """The written-out pattern is checked on its values: 1 / (3 + exp(-z)) is no sigmoid."""
    from netlens.output_reader import ends_in_sigmoid

    assert not ends_in_sigmoid(Wrap(Body(3), f).eval(), _x(1))
    assert ends_in_sigmoid(Wrap(Body(3), SIGMOIDS["one_over"]).eval(), _x(1))


def test_evaluate_clamped_sigmoid_curve_starts_at_models_probability() -> None:
    """evaluate's deletion curve starts at the model's own p(label) (it was squashed into
    [0.45, 0.55])."""
    body = Body(1).eval()
    x, y = _x(), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        p = torch.sigmoid(body(x)[:, 0]).numpy()
    lens = netlens.load(Wrap(body, SIGMOIDS["clamp"]).eval(), classes=["healthy", "sick"])
    r = lens.evaluate((x, y), methods="gradcam", metrics="deletion", layer="m.features", steps=2)
    got = r.arrays["gradcam/deletion/curve"][:, 0]
    np.testing.assert_allclose(got, np.where(y.numpy() == 1, p, 1 - p), atol=1e-5)


def _caught(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, NetlensWarning)]


def _tanh_sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.tanh(t / 2))  # a sigmoid netlens does not recognise


@pytest.mark.parametrize("k", [1, 5])
def test_unrecognised_probabilities_warn(k: int) -> None:
    """Outputs all in [0, 1] that come out of no sigmoid or softmax netlens knows: one warning
    naming --task (a single logit needs several images to tell)."""
    x = _x()
    lens = netlens.load(Wrap(Body(k), _tanh_sigmoid).eval())
    said = [m for m in _caught(lambda: lens.output(x)) if "lie in [0, 1]" in m]
    assert len(said) == 1 and "--task regression" in said[0]
    for quiet in (
        netlens.load(Wrap(Body(k), torch.sigmoid).eval()),
        netlens.load(Wrap(Body(k), _tanh_sigmoid).eval(), task="regression"),
        netlens.load(Wrap(Body(5), lambda t: torch.softmax(t, 1)).eval()),
    ):
        assert not [m for m in _caught(lambda q=quiet: q.output(x)) if "lie in [0, 1]" in m]


class Head1d(nn.Module):
    """A Conv1d head over one position: N×K×1 (``flip``: N×1×K; ``flat``: N×K)."""

    def __init__(self, mode: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv1d(8, 4, 1)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x).mean((2, 3))[:, :, None])
        return {"flip": out.transpose(1, 2), "flat": out.flatten(1)}.get(self.mode, out)


@pytest.mark.parametrize("mode", ["", "flip"])
def test_n_k_1_output_reads_as_n_k(mode: str) -> None:
    """N×K×1 and N×1×K logits read as N×K for cam, evaluate and ablate, as the same model
    with .flatten(1) appended (cam crashed with a TypeError after every map was made)."""
    x, y = _x(), torch.tensor([0, 1, 2, 3])
    got, ref = Head1d(mode).eval(), Head1d("flat").eval()
    a = netlens.cam(got, x, method="gradcam", layer="features")
    b = netlens.cam(ref, x, method="gradcam", layer="features")
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-6)
    assert a.table[0]["prediction"] == b.table[0]["prediction"]
    kw = {"methods": "gradcam", "metrics": "deletion", "layer": "features", "steps": 2}
    ea, eb = netlens.load(got).evaluate((x, y), **kw), netlens.load(ref).evaluate((x, y), **kw)
    key = "gradcam/deletion/curve"
    np.testing.assert_allclose(ea.arrays[key], eb.arrays[key], atol=1e-6)
    aa = netlens.load(got).ablate((x, y), metric="prob", mode="zero", layers="features")
    ab = netlens.load(ref).ablate((x, y), metric="prob", mode="zero", layers="features")
    assert aa.table == ab.table


class Depth(nn.Module):
    """Dense regression: N×H×W softplus depth, as DPT's ``predicted_depth``."""

    def __init__(self, reduce: torch.Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 1, 1)
        self.reduce = reduce  # a mask to sum the depth over: the reference N×1 regression

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = nn.functional.softplus(self.head(self.body(x))).squeeze(1)
        return d if self.reduce is None else (d * self.reduce).flatten(1).sum(1, keepdim=True)


def test_dense_regression_targets_explain_the_summed_value(tmp_path) -> None:
    """task regression on a depth map: output:0 explains the depth summed over the map,
    region:0@mask over the mask, as the same model reduced to that sum does (output:0 crashed
    in cam_result, the mask was refused as needing a dense output); region:0 alone is
    refused in one line."""
    x = _x(2)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 4:24] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    lens = netlens.load(Depth().eval(), task="regression")
    whole = torch.ones(32, 32)
    inside = torch.from_numpy(mask > 0).float()
    for target, reduce in (("output:0", whole), (f"region:0@{tmp_path / 'm.png'}", inside)):
        r = lens.cam(x, method="gradcam", layer="body", target=target)
        ref = netlens.load(Depth(reduce).eval(), task="regression")
        want = ref.cam(x, method="gradcam", layer="body", target="output:0")
        np.testing.assert_allclose(r.heatmaps, want.heatmaps, atol=1e-6)
        with torch.no_grad():
            mean = Depth()(x).mean((1, 2)).numpy()
        np.testing.assert_allclose([row["value"] for row in r.table], mean, rtol=1e-5)
        assert r.table[0]["prediction"] is None and "output 0" in r.table[0]["target_name"]
    by_index = lens.cam(x, method="gradcam", layer="body", target=0)
    first = lens.cam(x, method="gradcam", layer="body", target="output:0")
    np.testing.assert_allclose(by_index.heatmaps, first.heatmaps)
    with pytest.raises(TargetError, match="no predicted region"):
        lens.cam(x, method="gradcam", layer="body", target="region:0")


def test_depth_read_as_segmentation_warns() -> None:
    """A one-channel map positive at every pixel (depth) read by default as a binary
    segmentation: one warning suggesting --task regression; a segmenter's logits, which are
    negative somewhere, and task regression stay quiet."""
    x = _x(2)
    said = _caught(lambda: netlens.load(Depth().eval()).output(x))
    assert [m for m in said if "positive at every pixel" in m and "--task regression" in m]
    quiet = _caught(lambda: netlens.load(Depth().eval(), task="regression").output(x))
    assert not [m for m in quiet if "positive at every pixel" in m]
    seg = _caught(lambda: netlens.load(Seg().eval()).output(x))
    assert not [m for m in seg if "positive at every pixel" in m]


class Seg(nn.Module):
    """A one-channel binary segmenter (``two``: the same as two channels ``[0, z]``)."""

    def __init__(self, two: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 1, 1)
        self.two = two
        with torch.no_grad():
            self.head.bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.body(x))
        return torch.cat([torch.zeros_like(z), z], 1) if self.two else z


def test_binary_segmentation_region_scores_the_models_logit() -> None:
    """Score-CAM of a one-channel segmenter equals the same model written as [0, z] (its
    region scored z/2: Score-CAM at half the model's scale, r 0.990)."""
    x = _x(2)
    one, two = Seg().eval(), Seg(two=True).eval()
    with torch.no_grad():
        assert 0 < int((one(x) > 0).sum()) < one(x).numel()
    a = netlens.cam(one, x, method="scorecam", layer="body")
    b = netlens.cam(two, x, method="scorecam", layer="body", target="region:1")
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-5)
    probs = netlens.load(one).probabilities(netlens.load(one).output(x))
    np.testing.assert_allclose(probs, netlens.load(two).probabilities(netlens.load(two).output(x)))


def test_single_logit_with_one_class_name() -> None:
    """classes=["cancer"] on a single logit names the positive class: -t cancer is -t pos,
    the prediction is named (it said "1"; -t cancer was refused)."""
    body = Body(1).eval()
    x = _x(2)
    lens = netlens.load(body, classes=["cancer"])
    pos = lens.cam(x, method="gradcam", layer="features", target="pos")
    named = lens.cam(x, method="gradcam", layer="features", target="cancer")
    np.testing.assert_allclose(named.heatmaps, pos.heatmaps)
    assert [r["target_name"] for r in named.table] == ["cancer", "cancer"]
    neg = lens.cam(x, method="gradcam", layer="features", target="not cancer")
    np.testing.assert_allclose(
        neg.heatmaps, lens.cam(x, method="gradcam", layer="features", target="neg").heatmaps
    )
    with torch.no_grad():
        positive = body(x)[:, 0] > 0
    pred = lens.cam(x, method="gradcam", layer="features")
    want = ["cancer" if p else "not cancer" for p in positive.tolist()]
    assert [r["prediction_name"] for r in pred.table] == want
