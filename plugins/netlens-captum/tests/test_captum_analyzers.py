"""Every captum analyzer through netlens: registration, shapes, targets, no side effects."""

from __future__ import annotations

import json

import netlens_captum
import numpy as np
import pytest
import torch

from netlens.errors import NetlensError, TargetError
from netlens.lens import Lens
from netlens.testing import TINY_CLASSES, assert_model_unchanged, assert_no_hooks

NAMES = ["integrated-gradients", "saliency", "occlusion", "guided-backprop", "guided-gradcam"]
FAST = {"integrated-gradients": {"steps": 8}}


def test_registered_through_entry_point(plugin_host):
    host = plugin_host()
    assert set(NAMES) <= set(host.analyzers.names())
    entry = host.analyzers.entries["integrated-gradients"]
    assert (entry.package, entry.version, entry.builtin) == ("netlens-captum", "0.1.0", False)
    assert host.plugins["captum"].package == "netlens-captum"


def test_registered_as_plain_module(plugin_host):
    host = plugin_host(netlens_captum, entry_points=False)
    assert host.analyzers.names() == NAMES
    assert not host.problems


@pytest.mark.parametrize("name", NAMES)
def test_maps_targets_and_no_side_effects(name, tiny_lens, sample_images, tmp_path):
    model = tiny_lens.model
    model.train()  # the analyzer must run in eval mode and leave this flag as it was
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    with assert_model_unchanged(model):
        result = tiny_lens.run(name, sample_images, **FAST.get(name, {}))
    assert_no_hooks(model)
    assert model.training and model.bn1.training
    n = len(sample_images)
    assert result.arrays["attributions"].shape == (n, 3, 32, 32)
    assert result.maps.shape == (n, 32, 32)
    np.testing.assert_allclose(result.maps, result.arrays["attributions"].sum(axis=1), rtol=1e-5)
    assert np.isfinite(result.maps).all() and np.abs(result.maps).max() > 0
    with torch.no_grad():
        model.eval()
        predicted = model(tiny_lens.preprocess(sample_images)).argmax(1).tolist()
    assert result.targets == predicted
    files = result.save(tmp_path)
    assert {f.suffix for f in files} == {".png", ".npy", ".csv", ".json"}
    summary = json.loads((tmp_path / f"{name}.json").read_text())
    assert summary["analyzer"] == name and summary["targets"] == predicted


def test_target_by_name_index_and_per_image(tiny_lens, sample_images):
    by_name = tiny_lens.run("saliency", sample_images, target="square")
    assert by_name.targets == [1, 1, 1]
    assert by_name.meta["classes"] == ["square"] * 3
    per_image = tiny_lens.run("saliency", sample_images, target=[0, "cross", 2])
    assert per_image.targets == [0, 3, 2]
    from_cli = tiny_lens.run("saliency", sample_images, target="0,cross,2")
    np.testing.assert_array_equal(from_cli.maps, per_image.maps)
    assert not np.allclose(per_image.maps[0], by_name.maps[0])


@pytest.mark.parametrize("target", ["sqare", 7, [0, 1]])
def test_bad_targets_fail_with_one_line(target, tiny_lens, sample_images):
    with pytest.raises(TargetError) as err:
        tiny_lens.run("saliency", sample_images, target=target)
    assert "\n" not in str(err.value)


def test_sample_images_are_used_when_no_images_are_given(tiny_model, sample_images):
    lens = Lens(tiny_model, classes=TINY_CLASSES, samples=sample_images)
    result = lens.run("guided-backprop")
    assert result.meta["images"] == ["sample0", "sample1", "sample2"]


def test_unknown_option_names_the_options(tiny_lens, sample_images):
    with pytest.raises(NetlensError, match="has no option 'stpes'.*steps"):
        tiny_lens.run("integrated-gradients", sample_images, stpes=4)


def test_guided_gradcam_layer_auto_and_named(tiny_lens, sample_images):
    auto = tiny_lens.run("guided-gradcam", sample_images)
    assert auto.meta["layer"] == "act2"
    named = tiny_lens.run("guided-gradcam", sample_images, layer="conv1")
    assert named.meta["layer"] == "conv1"
    assert not np.allclose(auto.maps, named.maps)
    with pytest.raises(NetlensError, match="conv3"):
        tiny_lens.run("guided-gradcam", sample_images, layer="conv3")


class _Reused(torch.nn.Module):
    """One in-place ReLU run three times, one conv twice; and a token output (a ViT's)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=True)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.c2(self.relu(self.c2(self.relu(self.c1(x))))))
        return self.fc(h.mean((2, 3)))


def test_guided_gradcam_on_a_module_that_runs_several_times():
    """The automatic layer was ``relu@2``, looked up as a module name: KeyError."""
    from captum.attr import GuidedGradCam

    from netlens.errors import AnalyzerError

    torch.manual_seed(0)
    model = _Reused().eval()
    lens = Lens(model, {"size": (12, 12)})
    x = torch.rand(2, 3, 12, 12)
    res = lens.run("guided-gradcam", x)
    assert res.meta["layer"] == "relu"
    target = lens.logits(x).argmax(1)
    want = GuidedGradCam(model, model.relu).attribute(x.clone().requires_grad_(), target=target)
    np.testing.assert_allclose(res.arrays["attributions"], want.detach().numpy(), atol=1e-7)
    with pytest.raises(AnalyzerError, match="last call .* 'relu@0' is call 0 of 3"):
        lens.run("guided-gradcam", x, layer="relu@0")
    vit = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Flatten(2))
    tokens = Lens(torch.nn.Sequential(vit, _Pool()).eval(), {"size": (12, 12)})
    with pytest.raises(AnalyzerError, match="N×C×H×W maps, but '0.1' gives"):
        tokens.run("guided-gradcam", x, layer="0.1")


class _Pool(torch.nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.mean(2)[:, :3]


def test_a_single_logit_model_is_explained_for_either_class():
    """Every captum analyzer refused a binary (N×1) model; captum explains its logit (target
    0), and the negative class is its negative."""
    from captum.attr import Saliency

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 1),
    ).eval()  # fmt: skip
    lens = Lens(model, {"size": (12, 12)}, classes=["healthy", "tumour"])
    x = torch.rand(2, 3, 12, 12)
    want = Saliency(model).attribute(x.clone().requires_grad_(), target=0, abs=False)
    pos = lens.run("saliency", x, target="pos", abs=False)
    neg = lens.run("saliency", x, target="healthy", abs=False)
    np.testing.assert_allclose(pos.arrays["attributions"], want.numpy(), atol=1e-7)
    np.testing.assert_allclose(neg.arrays["attributions"], -want.numpy(), atol=1e-7)
    assert [r["class"] for r in neg.table] == ["healthy", "healthy"]
    z = model(x).detach()[:, 0]
    assert [r["probability"] for r in pos.table] == pytest.approx(torch.sigmoid(z).tolist())


class _FailsOnCall(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner, self.calls, self.fail_at = inner, 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.inner(x)


# call 1 computes the prediction; call 2 is captum's first forward; Guided Grad-CAM's call 2
# finds its layer's call, and its call 4 is its guided-backprop pass (ReLU hooks registered),
# after the Grad-CAM pass (layer hook)
@pytest.mark.parametrize(("name", "fail_at"), [*((n, 2) for n in NAMES), ("guided-gradcam", 4)])
def test_no_hooks_left_when_the_model_raises(name, fail_at, tiny_model, sample_images):
    model = _FailsOnCall(tiny_model, fail_at).train()  # train mode must survive the error
    lens = Lens(model, classes=TINY_CLASSES)
    options = {"layer": "inner.act2"} if name == "guided-gradcam" else {}
    with assert_model_unchanged(tiny_model), pytest.raises(RuntimeError, match="boom"):
        lens.run(name, sample_images, **options)
    assert_no_hooks(model)
    assert model.calls == fail_at


class _Detached(torch.nn.Module):
    """A forward that cuts the graph: no gradient reaches the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)).detach())


@pytest.mark.parametrize("name", [n for n in NAMES if n != "occlusion"])
def test_gradient_methods_on_a_graph_cut_say_so_in_one_line(name):
    """torch's "appears to not have been used in the graph" came through as a RuntimeError."""
    from netlens.errors import AnalyzerError

    lens = Lens(_Detached().eval(), {"size": (12, 12)})
    x = torch.rand(2, 3, 12, 12)
    extra = {"layer": "conv"} if name == "guided-gradcam" else FAST.get(name, {})
    with pytest.raises(AnalyzerError, match="no gradient flows .* use occlusion") as err:
        lens.run(name, x, **extra)
    assert "\n" not in str(err.value)
    assert lens.run("occlusion", x).arrays  # the gradient-free one still answers


def test_guided_backprop_without_relus_says_it_is_the_plain_gradient():
    """On GELU models (ConvNeXt, ViT) nothing is guided, which the maps did not say."""
    from captum.attr import Saliency

    from netlens.errors import NetlensWarning

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    lens = Lens(model, {"size": (12, 12)})
    x = torch.rand(2, 3, 12, 12)
    with pytest.warns(NetlensWarning, match="has none .* plain gradient"):
        res = lens.run("guided-backprop", x, target=1)
    want = Saliency(model).attribute(x.clone().requires_grad_(), target=1, abs=False)
    np.testing.assert_allclose(res.arrays["attributions"], want.numpy(), atol=1e-7)
