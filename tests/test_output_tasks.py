"""Outputs that are not one softmax over classes, read as their models mean them: a binary
segmentation's one logit per pixel, multi-label masks, a single logit squeezed to N, regression
values; and the analyses that only score classifiers refuse the others in one line. Each case
used to answer wrongly without a word (or crash); numbers are checked against hand-written
references on the model's own output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as photos
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.errors import AnalyzerError, NetlensError


def _images(n: int = 2, size: int = 48) -> torch.Tensor:
    pics = [photos.astronaut(), photos.chelsea(), photos.coffee()][:n]
    x = torch.stack([torch.from_numpy(p[: size * 4 : 4, : size * 4 : 4].copy()) for p in pics])
    return x.permute(0, 3, 1, 2).float() / 255 - 0.5


class Seg(nn.Module):
    """A tiny fully convolutional segmenter: ``k`` channels per pixel, optionally sigmoided."""

    def __init__(self, k: int, sigmoid: bool = False) -> None:
        super().__init__()
        torch.manual_seed(k)
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, 1, 2))
        self.head = nn.Conv2d(8, k, 1)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(torch.relu(self.enc(x)))
        return torch.sigmoid(z) if self.sigmoid else z

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.enc(x)))


def _centre(model: Seg, x: torch.Tensor, share: float) -> None:
    """Move the head's biases so about ``share`` of the pixels of each channel are positive."""
    with torch.no_grad():
        z = model.logits(x)
        for c in range(z.shape[1]):
            model.head.bias[c] -= torch.quantile(z[:, c].flatten(), 1 - share)


def _gradcam(model: Seg, x: torch.Tensor, score) -> np.ndarray:  # noqa: ANN001
    """Grad-CAM by hand on ``enc.2`` of ``score(logits) -> N``, upsampled, per-map [0, 1]."""
    acts = {}
    hook = model.enc[2].register_forward_hook(lambda m, i, o: acts.update(a=o))
    z = model.logits(x)
    hook.remove()
    (g,) = torch.autograd.grad(score(z).sum(), acts["a"])
    cam = torch.relu((g.mean((2, 3), keepdim=True) * acts["a"]).sum(1))
    cam = cam / cam.flatten(1).max(1).values[:, None, None]
    return cam.detach().numpy()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_a_binary_segmentation_reads_its_one_logit_per_pixel_as_foreground() -> None:
    """N×1×H×W (SMP's ``Unet(classes=1)``): a softmax over one channel gave probability 1
    everywhere, so ``region:pred`` was every pixel and ``predict`` said 1.0."""
    x = _images()
    model = Seg(1).eval()
    _centre(model, x, 0.3)
    z = model.logits(x).detach()[:, 0]
    fg = z > 0
    lens = netlens.Lens(model, netlens.Preprocess(size=(48, 48)))
    res = lens.cam(x, layer="enc.2", target="region:pred")
    assert [r["target_name"] for r in res.rows()] == [f"1 ({int(m.sum())} px)" for m in fg]
    probs = lens.predict(x)
    np.testing.assert_allclose(probs[:, 1], torch.sigmoid(z).mean((1, 2)), atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    ref = _gradcam(model, x, lambda o: (o[:, 0] * fg).flatten(1).sum(1))
    for i in range(len(x)):
        assert _corr(res.heatmaps[i], ref[i]) > 0.999
    back = lens.cam(x, layer="enc.2", target="region:0").heatmaps  # the background: −z there
    ref = _gradcam(model, x, lambda o: (-o[:, 0] * ~fg).flatten(1).sum(1))
    assert all(_corr(back[i], ref[i]) > 0.999 for i in range(len(x)))


@pytest.mark.parametrize("how", ["sigmoid", "task"])
def test_multi_label_masks_are_read_through_sigmoids_not_an_argmax(how: str) -> None:
    """Several sigmoids per pixel (multi-label segmentation): the probability was a softmax
    across labels (0.42 where the model said 0.98) and a label's region an argmax between labels
    that are both on; with ``task="multilabel"`` region targets were refused."""
    x = _images()
    model = Seg(3, sigmoid=how == "sigmoid").eval()
    _centre(model, x, 0.6)  # labels overlap: most pixels hold two
    z = model.logits(x).detach()
    lens = netlens.Lens(
        model, netlens.Preprocess(size=(48, 48)), task="multilabel" if how == "task" else None
    )
    np.testing.assert_allclose(lens.predict(x), torch.sigmoid(z).mean((2, 3)), atol=1e-5)
    res = lens.cam(x, layer="enc.2", target="region:1")
    on = z[:, 1] > 0
    assert [r["target_name"] for r in res.rows()] == [f"1 ({int(m.sum())} px)" for m in on]
    ref = _gradcam(model, x, lambda o: (o[:, 1] * on).flatten(1).sum(1))
    assert all(_corr(res.heatmaps[i], ref[i]) > 0.999 for i in range(len(x)))
    pred = lens.cam(x, layer="enc.2", target="region:pred").rows()
    most = (z > 0).flatten(2).sum(2).argmax(1)
    assert [r["target"] for r in pred] == most.tolist()


class SqueezedBinary(nn.Module):
    """``BCEWithLogitsLoss`` training's ``.squeeze(1)``: one logit per image, shape N."""

    def __init__(self, squeeze: str = "1") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 1)
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.features(x).mean((2, 3)))
        return z.squeeze(1) if self.squeeze == "1" else z.squeeze() if self.squeeze else z


def test_a_single_logit_squeezed_to_n_is_the_n_by_1_model() -> None:
    """``cam``/``predict`` crashed with IndexError, ``evaluate`` and ``ablate`` refused it."""
    x = _images(3)
    flat, kept = SqueezedBinary("1").eval(), SqueezedBinary("").eval()
    kept.load_state_dict(flat.state_dict())
    pre = netlens.Preprocess(size=(48, 48))
    a, b = netlens.Lens(flat, pre), netlens.Lens(kept, pre)
    np.testing.assert_allclose(a.predict(x), b.predict(x), atol=1e-6)
    for target in ("pos", "neg"):
        np.testing.assert_allclose(
            a.cam(x, target=target).heatmaps, b.cam(x, target=target).heatmaps, atol=1e-5
        )
    y = torch.tensor([0, 1, 1])
    assert a.ablate((x, y), mode="zero").rows == b.ablate((x, y), mode="zero").rows


def test_a_forward_that_squeezes_the_batch_axis_away_reads_one_image_as_one_row() -> None:
    """``.squeeze()`` of one image's 1×K is K values: read as K images' single logits, the
    maps and probabilities would belong to no image; it is that image's row (see
    tests/test_squeezed_output.py)."""

    class Squeezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)).squeeze()

    lens = netlens.Lens(Squeezed().eval(), netlens.Preprocess(size=(48, 48)))
    x = _images(2)
    np.testing.assert_allclose(lens.predict(x[:1]), lens.predict(x)[:1], atol=1e-6)


@pytest.mark.parametrize("task", ["binary", "dense"])
def test_a_task_the_outputs_do_not_fit_is_refused(task: str, tmp_path) -> None:
    """``--task binary`` on a 5-class model read logit 0 as the positive one (a "square" at
    97 % where the model says circle); ``--task dense`` crashed. Both are said in one line."""
    from hostile_inputs import assert_one_clean_line

    from netlens.cli.app import app
    from netlens.render.overlay import write_png

    img = write_png(photos.astronaut()[::8, ::8].copy(), tmp_path / "a.png")
    res = CliRunner().invoke(app, ["cam", str(img), "--task", task, "-o", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert f"task '{task}' needs a model that outputs" in assert_one_clean_line(res.output)
    assert not (tmp_path / "o").exists()


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 5 * self.fc(self.features(x).mean((2, 3)))


def test_ablate_refuses_regression_and_label_metrics_of_multi_label_outputs() -> None:
    """It scored regression values by a softmax (accuracy 0.375 from an argmax of values) and a
    multi-label model's sigmoids by a softmax across labels (prob 0.50 for labels at 0.99);
    the label-free metrics now read the labels' sigmoids (tests/test_ablation_multilabel.py)."""
    x, y = _images(3), torch.tensor([0, 1, 2])
    pre = netlens.Preprocess(size=(48, 48))
    with pytest.raises(AnalyzerError, match="outputs are regression values"):
        netlens.Lens(Regressor().eval(), pre, task="regression").ablate((x, y))
    lens = netlens.Lens(Regressor().eval(), pre, task="multilabel")
    with pytest.raises(AnalyzerError, match="multi-label"):
        lens.ablate((x, y), metric="accuracy")
    r = lens.ablate((x, y), metric="prob", layers="type:Conv2d", mode="zero")
    assert r.meta["task"] == "multilabel" and 0.0 <= r.baseline["value"] <= 1.0


def test_regression_values_are_shown_as_values_not_percentages(tmp_path) -> None:
    """The table said ``predicted 1 (205.6%)`` and the figure drew the outputs on a probability
    axis, "p = -151.9 % — weak class" under the map."""
    from netlens.cli.app import app

    model = Regressor().eval()
    x = _images(1)
    with torch.no_grad():
        want = model(x)[0]
    path = tmp_path / "reg.pt"
    torch.save(model, path)
    image = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(image), cv2.resize(photos.astronaut()[..., ::-1], (48, 48)))
    lens = netlens.load(path, task="regression", trust=True)
    rows = lens.cam(image, target="output:0").rows()
    assert "probability" not in rows[0] and rows[0]["value"] == pytest.approx(
        float(lens.output(lens.preprocess(image))[0, 0].detach()), abs=1e-5
    )
    assert rows[0]["prediction"] is None  # the argmax of raw values is no prediction
    named = netlens.load(path, task="regression", trust=True, classes="age,height,weight")
    assert named.cam(image, target="output:1").rows()[0]["target_name"] == "height"
    assert want.shape == (3,)
    res = CliRunner().invoke(
        app,
        [
            "cam",
            str(path),
            str(image),
            "--trust",
            "--task",
            "regression",
            "-t",
            "output:0",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "%" not in res.output.split("gradcam on layer")[1].split("layer:")[0]
    assert f"(= {rows[0]['value']:.4g})" in res.output


def test_sanity_keeps_a_dense_region_across_the_cascade(tmp_path) -> None:
    """A region target (``region:2@mask.png``) was cut to its class index, and each randomised
    copy explained the pixels *it* predicted as that class: none, for the intact model, so the
    first map was empty and the verdict "passes"."""
    import cv2

    x = _images()
    model = Seg(3).eval()
    _centre(model, x, 0.3)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    target = f"region:2@{tmp_path / 'm.png'}"
    lens = netlens.Lens(model, netlens.Preprocess(size=(48, 48)))
    want = lens.cam(x, layer="enc.2", target=target).heatmaps
    assert want.max() == pytest.approx(1.0)
    res = lens.run("sanity", x, method="gradcam", layer="enc.2", target=target)
    maps = res.arrays["gradcam/maps"]
    np.testing.assert_allclose(maps.reshape(-1, *want.shape)[0], want, atol=1e-5)


@pytest.mark.parametrize("depth", ["16-bit", "rgb"])
def test_a_region_mask_of_any_depth_or_scale_and_a_misshapen_one(tmp_path, depth: str) -> None:
    """``region:2@mask.png`` read its mask as 8-bit gray: a 16-bit label mask (object = 1) was
    an empty region; a mask of another shape was stretched onto the output."""
    import cv2

    x = _images()
    model = Seg(3).eval()
    lens = netlens.Lens(model, netlens.Preprocess(size=(48, 48)))
    m = np.zeros((96, 96), np.uint8)  # drawn at twice the input's size
    m[20:60, 20:60] = 1
    img = m.astype(np.uint16) if depth == "16-bit" else np.dstack([m * 0, m * 0, m * 200])
    cv2.imwrite(str(tmp_path / "m.png"), img)
    rows = lens.cam(x, layer="enc.2", target=f"region:2@{tmp_path / 'm.png'}").rows()
    assert [r["target_name"] for r in rows] == ["2 (400 px)"] * 2
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((48, 96), 255, np.uint8))
    with pytest.raises(NetlensError, match="not shaped as the model's output"):
        lens.cam(x, layer="enc.2", target=f"region:2@{tmp_path / 'wide.png'}")


def test_multilabel_on_a_one_logit_segmentation_is_its_one_label() -> None:
    """``--task multilabel`` on N×1×H×W was ignored: label 0 read as the background (1 − σ)
    over the whole image, while the JSON said multilabel."""
    x = _images()
    model = Seg(1).eval()
    _centre(model, x, 0.3)
    z = model.logits(x).detach()[:, 0]
    lens = netlens.Lens(model, netlens.Preprocess(size=(48, 48)), task="multilabel")
    np.testing.assert_allclose(lens.predict(x)[:, 0], torch.sigmoid(z).mean((1, 2)), atol=1e-6)
    rows = lens.cam(x, layer="enc.2", target="region:0").rows()
    assert [r["target_name"] for r in rows] == [f"0 ({int((m > 0).sum())} px)" for m in z]


def test_an_empty_region_mask_is_refused(tmp_path) -> None:
    """An all-zero mask file gave an empty map and a warning to "give the region as a mask"."""
    import cv2

    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((48, 48), np.uint8))
    lens = netlens.Lens(Seg(3).eval(), netlens.Preprocess(size=(48, 48)))
    with pytest.raises(NetlensError, match="is empty"):
        lens.cam(_images(), layer="enc.2", target=f"region:1@{tmp_path / 'empty.png'}")


def test_a_segmenter_ending_in_softmax_is_not_softmaxed_again() -> None:
    """A dense model ending in ``nn.Softmax(1)``: the probability of a class is the mean of its
    own per-pixel probabilities, not of their softmax taken again (flattened towards 1/K)."""
    model = nn.Sequential(Seg(5), nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        model[0].head.weight *= 20  # confident pixels: a second softmax would flatten them
    x = _images(2)
    with torch.no_grad():
        own = model(x).mean((2, 3))
    lens = netlens.Lens(model, netlens.Preprocess(size=(48, 48)))
    assert torch.allclose(lens.probabilities(lens.output(x)), own, atol=1e-6)
    cam = lens.cam(x, target="region:1", layer="0.enc.2")
    for i, row in enumerate(cam.rows()):
        assert row["probability"] == pytest.approx(float(own[i, 1]), abs=1e-5)
