"""Numbers checked against independent references computed with plain torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("baseline", ["zero", "black"])
def test_integrated_gradients_completeness(baseline, tiny_lens, sample_images):
    """Sum of attributions ≈ f(x) − f(baseline) for the target logit, image by image."""
    result = tiny_lens.run("integrated-gradients", sample_images, steps=48, baseline=baseline)
    x = tiny_lens.preprocess(sample_images)
    if baseline == "zero":
        base = torch.zeros_like(x)
    else:  # pixel value 0, normalised: (0 - mean) / std per channel
        mean = torch.tensor(tiny_lens.transform.mean).view(1, 3, 1, 1)
        std = torch.tensor(tiny_lens.transform.std).view(1, 3, 1, 1)
        base = ((0 - mean) / std).expand_as(x)
    with torch.no_grad():
        fx, fb = tiny_lens.model(x), tiny_lens.model(base)
    idx = torch.arange(len(x)), torch.tensor(result.targets)
    expected = (fx[idx] - fb[idx]).numpy()
    sums = result.arrays["attributions"].reshape(len(x), -1).sum(axis=1)
    assert np.abs(expected).min() > 1e-3  # the check below is not trivially 0 ≈ 0
    np.testing.assert_allclose(sums, expected, rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(
        result.meta["completeness_delta"], np.abs(sums - expected), atol=1e-5
    )
    assert [row["completeness_delta"] for row in result.table] == result.meta["completeness_delta"]


def test_saliency_is_the_input_gradient(tiny_lens, sample_images):
    result = tiny_lens.run("saliency", sample_images, target=2, abs=False)
    x = tiny_lens.preprocess(sample_images).requires_grad_()
    (grad,) = torch.autograd.grad(tiny_lens.model(x)[:, 2].sum(), x)
    np.testing.assert_allclose(result.arrays["attributions"], grad.numpy(), rtol=1e-4, atol=1e-7)
    assert result.meta["signed"]
    unsigned = tiny_lens.run("saliency", sample_images, target=2)
    np.testing.assert_allclose(unsigned.arrays["attributions"], grad.abs().numpy(), atol=1e-7)
    assert not unsigned.meta["signed"]


def test_occlusion_of_the_whole_image_is_the_logit_drop(tiny_lens, sample_images):
    result = tiny_lens.run("occlusion", sample_images, window=32, stride=32, target=1)
    x = tiny_lens.preprocess(sample_images)
    with torch.no_grad():
        drop = (tiny_lens.model(x)[:, 1] - tiny_lens.model(torch.zeros_like(x))[:, 1]).numpy()
    attr = result.arrays["attributions"]
    np.testing.assert_allclose(
        attr, np.broadcast_to(drop[:, None, None, None], attr.shape), rtol=1e-4, atol=1e-6
    )
    assert (result.meta["window"], result.meta["stride"]) == (32, 32)


@pytest.mark.parametrize(
    "spec",
    [
        {"mean": (0.5,), "std": (0.5,)},  # torchvision's Normalize((0.5,), (0.5,)) on RGB
        {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "channel_order": "bgr"},
    ],
)
def test_the_black_baseline_is_a_black_image_as_preprocessed(spec, sample_images):
    """A one-value mean crashed ("shape '[1, 3, 1, 1]' is invalid for input of size 1")."""
    import netlens

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    lens = netlens.load(model, input_size=32, **spec)
    result = lens.run("integrated-gradients", sample_images, steps=32, baseline="black")
    x = lens.preprocess(sample_images)
    black = lens.preprocess(np.zeros((32, 32, 3), np.uint8))
    with torch.no_grad():
        fx, fb = model(x), model(black.expand_as(x))
    idx = torch.arange(len(x)), torch.tensor(result.targets)
    sums = result.arrays["attributions"].reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(sums, (fx[idx] - fb[idx]).numpy(), rtol=2e-2, atol=1e-4)


def test_guided_gradcam_refuses_a_selector_of_several_layers(tiny_lens, sample_images):
    """``layer='layer*'`` ran on its first match only, without a word."""
    from netlens.errors import AnalyzerError

    names = [n for n, m in tiny_lens.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with pytest.raises(AnalyzerError, match="explains one layer"):
        tiny_lens.run("guided-gradcam", sample_images, layer=",".join(names[:2]))


def test_a_regressions_output_is_a_value_not_a_probability(sample_images):
    import netlens

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    lens = netlens.load(model, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, task="regression")
    result = lens.run("saliency", sample_images, target="output:1")
    with torch.no_grad():
        want = model(lens.preprocess(sample_images))[:, 1]
    assert [r["value"] for r in result.table] == pytest.approx(want.tolist(), rel=1e-5)
    assert all("probability" not in r for r in result.table)
    title = next(iter(result.figures().values())).texts[0].get_text()
    assert "value=" in title and "p=" not in title
