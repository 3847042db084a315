"""``top-activations`` runs a forward again when an input-dependent in-place write destroyed its
capture (a model with its own hook: the probe could not re-run it); ``mean=``/``std=`` and
``input_size=`` on a spec that calls a Hugging Face image processor are applied, not only
recorded (one line for a function whose normalisation is unknown); images that come out of
the preprocessing at different sizes are named in one line. Tiny models; references from
plain hooks and from transformers itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hostile_inputs import assert_one_clean_line
from PIL import Image
from torch import nn

import netlens
from netlens.errors import NetlensError
from netlens.preprocess import Preprocess

pytestmark = [pytest.mark.usefixtures("one_thread")]

MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]


def quiet(fn, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


# -- 1: top-activations and an input-dependent in-place write --------------------------------
class CondWrite(nn.Module):
    """conv's output is overwritten in place only for a bright batch (input-dependent)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.mean() > 5:
            y.relu_()
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("user_hook", [False, True])
def test_top_reruns_a_forward_whose_capture_an_in_place_write_destroyed(user_hook):
    """With the model's own hook on fc the probe cannot re-run the forward itself: top
    stopped with "…run this forward again" (meaningless to a top user); now it runs the
    batch again, and its peaks are those of conv's output before the write."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[2:] += 10  # the second batch of two is bright: relu_ runs on it only
    torch.manual_seed(0)
    model = CondWrite().eval()
    if user_hook:
        model.fc.register_forward_hook(lambda *a: None)
    ref = []
    h = model.conv.register_forward_hook(lambda m, i, o: ref.append(o.detach().clone()))
    with torch.no_grad():
        model(x[:2].clone()), model(x[2:].clone())
    h.remove()
    act = torch.cat(ref)  # 4×8×8×8, as conv returned it
    peak, where = act.reshape(4, 8, -1).max(dim=2)  # N×C
    order = torch.sort(peak.T, dim=1, descending=True, stable=True).indices[:, :2]  # C×k
    want_pos = torch.gather(where.T, 1, order)
    lens = quiet(netlens.load, model, input_size=8)
    res = quiet(
        lens.run,
        "top-activations",
        (x, torch.zeros(4, dtype=torch.long)),
        layer="conv",
        k=2,
        batch_size=2,
    )
    a = res.arrays
    np.testing.assert_array_equal(a["indices"], order.numpy())
    np.testing.assert_allclose(a["scores"], torch.gather(peak.T, 1, order).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(a["positions"][..., 0], (want_pos // 8).numpy())
    np.testing.assert_array_equal(a["positions"][..., 1], (want_pos % 8).numpy())
    assert not res.meta.get("warnings")


# -- 2, 3: a spec that calls a Hugging Face image processor ----------------------------------
tf = pytest.importorskip("transformers", reason="Hugging Face folders need the bench extras")
skdata = pytest.importorskip("skimage.data", reason="needs scikit-image's photos")


def photo(name: str, width: int = 96) -> Image.Image:
    img = Image.fromarray(getattr(skdata, name)())
    return img.resize((width, round(width * img.height / img.width)), Image.Resampling.BOX)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):  # noqa: ANN001, ANN201
    """A tiny MobileNetV2 whose processor resizes the shorter side to 40 and crops nothing
    (each image keeps its aspect ratio: netlens calls the processor itself)."""
    torch.manual_seed(0)
    cfg = tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=3)
    path = tmp_path_factory.mktemp("hf") / "mobilenet"
    quiet(tf.MobileNetV2ForImageClassification(cfg).eval().save_pretrained, path)
    proc = tf.MobileNetV2ImageProcessor(
        size={"shortest_edge": 40}, do_center_crop=False, image_mean=MEAN, image_std=STD
    )
    quiet(proc.save_pretrained, path)
    return path


def pil_processor(**settings):  # noqa: ANN003, ANN201
    """transformers' own processor (PIL backend) with ``settings``: the reference."""
    cls = getattr(tf, "MobileNetV2ImageProcessorPil", tf.MobileNetV2ImageProcessor)
    return cls(do_center_crop=False, **settings)


@pytest.mark.parametrize("how", ["keywords", "dict"])
def test_mean_std_on_a_processor_calling_spec_are_applied(folder, how):
    """mean/std 0.5 were recorded but the processor's 0.4…/0.2… still applied (1.42 off)."""
    half = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    lens = quiet(netlens.load, folder, **({"preprocess": half} if how == "dict" else half))
    ref = pil_processor(size={"shortest_edge": 40}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for name in ("chelsea", "astronaut"):
        img = photo(name)
        want = ref(img, return_tensors="pt")["pixel_values"]
        got = lens.preprocess(img)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-5
    info = lens.preprocess_info()
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3


def test_input_size_on_a_processor_calling_spec_resizes_every_image(folder):
    """input_size=32 was recorded but each image kept the processor's 40×N."""
    lens = quiet(netlens.load, folder, input_size=32)
    ref = pil_processor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    for name in ("chelsea", "astronaut"):
        img = photo(name)
        want = ref(img, return_tensors="pt")["pixel_values"]
        got = lens.preprocess(img)
        assert got.shape == want.shape == (1, 3, 32, 32)
        assert float((got - want).abs().max()) < 1e-4
    batch = lens.batch([photo("chelsea"), photo("astronaut")])  # one size: one batch
    assert tuple(batch.tensor.shape) == (2, 3, 32, 32)


def test_mean_std_on_a_function_of_unknown_normalisation_is_refused_in_one_line():
    """Recorded and not applied before; now one line saying what to do."""

    def prep(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.resize((16, 16)), np.float32) / 255).permute(2, 0, 1)

    spec = Preprocess(size=None, mean=None, std=None, function=prep)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(NetlensError) as err:
        quiet(netlens.load, model, preprocess=spec, mean=(0.5,) * 3, std=(0.5,) * 3)
    line = assert_one_clean_line(str(err.value))
    assert "prep" in line and "normalise inside the function" in line
    # the same function given with mean=/std=: they say what it applies (unchanged)
    lens = quiet(netlens.load, model, preprocess=prep, mean=(0.5,) * 3, std=(0.5,) * 3)
    img = photo("chelsea")
    torch.testing.assert_close(lens.preprocess(img)[0], prep(img), rtol=0, atol=0)


@pytest.mark.parametrize("norm", [{}, {"mean": (0.5,) * 3, "std": (0.5,) * 3}])
def test_images_of_different_sizes_are_named_in_one_line(folder, norm):
    """A 40×60 and a 40×40 tensor: torch.stack's bare RuntimeError before."""
    lens = quiet(netlens.load, folder, **norm)
    with pytest.raises(NetlensError) as err:
        quiet(lens.run, "saliency", [photo("chelsea"), photo("astronaut")])
    line = assert_one_clean_line(str(err.value))
    assert "3×40×60" in line and "3×40×40" in line and "--input-size" in line
    assert "one at a time" in line


def test_a_user_function_of_several_sizes_is_named_in_one_line():
    def keep(img: Image.Image) -> torch.Tensor:  # each image at its own size
        return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    lens = quiet(netlens.load, model, preprocess=keep)
    with pytest.raises(NetlensError) as err:
        lens.batch([Image.new("RGB", (40, 32)), Image.new("RGB", (32, 32))])
    line = assert_one_clean_line(str(err.value))
    assert (
        "3×32×40" in line
        and "3×32×32" in line
        and "make the function return one size" in line
        and "keep" in line
    )
