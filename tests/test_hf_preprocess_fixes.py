"""A Hugging Face model is fed what transformers feeds it, or netlens says why it cannot: a
TimmWrapper's recorded ``pretrained_cfg``, a processor that resizes the shorter side and crops
nothing (its mean/std kept), a crop a spec cannot place (one line), and a folder without a
processor (a warning line that the normalisation is a guess). Tiny models with random weights,
built from configs (nothing downloaded); references from transformers itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hostile_inputs import assert_one_clean_line
from PIL import Image

import netlens
from netlens.errors import ModelLoadError, NetlensWarning

tf = pytest.importorskip("transformers", reason="Hugging Face folders need the bench extras")
skdata = pytest.importorskip("skimage.data", reason="needs scikit-image's photos")

pytestmark = [pytest.mark.usefixtures("one_thread")]

MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]


def quiet(fn, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def photo(name: str = "chelsea", width: int = 96) -> Image.Image:
    """A small photo (scikit-image's, 300×451 for chelsea) keeping its aspect ratio."""
    img = Image.fromarray(getattr(skdata, name)())
    return img.resize((width, round(width * img.height / img.width)), Image.Resampling.BOX)


def mobilenet_folder(tmp_path, processor=None):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    cfg = tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=3)
    folder = tmp_path / "mobilenet"
    quiet(tf.MobileNetV2ForImageClassification(cfg).eval().save_pretrained, folder)
    if processor is not None:
        quiet(processor.save_pretrained, folder)
    return folder


def tiny_vit():  # noqa: ANN201
    torch.manual_seed(0)
    cfg = tf.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    return tf.ViTForImageClassification(cfg).eval()


def pil_processor(folder):  # noqa: ANN001, ANN201
    """The folder's image processor on transformers' PIL backend (netlens' reference)."""
    return quiet(
        tf.AutoImageProcessor.from_pretrained, folder, local_files_only=True, backend="pil"
    )


# -- 2: transformers' TimmWrapper ------------------------------------------------------------
@pytest.mark.parametrize("how", ["folder", "object"])
def test_a_timm_wrapper_is_fed_its_recorded_pretrained_cfg(tmp_path, how):
    """A TimmWrapper records its recipe in config.json's pretrained_cfg (48 px, crop_pct 0.8,
    mean 0.4, std 0.3), which transformers' TimmWrapperImageProcessor applies: netlens fed the
    default tag's of the bare architecture (224², ImageNet mean/std), without a word."""
    pytest.importorskip("timm")
    if not hasattr(tf, "TimmWrapperForImageClassification"):
        pytest.skip("this transformers has no TimmWrapper")
    recipe = {
        "input_size": [3, 48, 48],
        "crop_pct": 0.8,
        "interpolation": "bicubic",
        "mean": [0.4, 0.4, 0.4],
        "std": [0.3, 0.3, 0.3],
        "crop_mode": "center",
        "num_classes": 3,
    }
    torch.manual_seed(0)
    cfg = tf.TimmWrapperConfig(architecture="test_resnet", num_labels=3, pretrained_cfg=recipe)
    model = tf.TimmWrapperForImageClassification(cfg).eval()
    folder = tmp_path / "tw"
    quiet(model.save_pretrained, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)  # nothing guessed
        lens = netlens.load(folder if how == "folder" else model)
    proc = quiet(tf.AutoImageProcessor.from_pretrained, folder, local_files_only=True)
    for name in ("chelsea", "astronaut"):
        img = photo(name)
        want = proc(img, return_tensors="pt")["pixel_values"]
        got = lens.preprocess(img)
        assert got.shape == want.shape == (1, 3, 48, 48)
        assert float((got - want).abs().max()) < 1e-5
    info = lens.preprocess_info()
    assert info["mean"] == [0.4] * 3 and "pretrained_cfg" in info["source"]


# -- 3: a resize a spec cannot say -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["mobilenet", "vit"])
def test_a_shorter_side_resize_without_a_crop_is_the_processors(tmp_path, kind):
    """MobileNetV2ImageProcessor(shortest_edge 40, no centre crop) makes 40×60 of a 300×451
    photo with its own mean/std: netlens gave the config's 32×32 with mean/std 0.5 (ImageNet's
    for a model without image_size) and said no image processor was found."""
    if kind == "mobilenet":
        proc = tf.MobileNetV2ImageProcessor(
            size={"shortest_edge": 40}, do_center_crop=False, image_mean=MEAN, image_std=STD
        )
        folder = mobilenet_folder(tmp_path, proc)
    else:
        proc = tf.ViTImageProcessor(size={"shortest_edge": 40}, image_mean=MEAN, image_std=STD)
        folder = tmp_path / "vit"
        quiet(tiny_vit().save_pretrained, folder)
        quiet(proc.save_pretrained, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)  # nothing guessed
        lens = netlens.load(folder)
    ref = pil_processor(folder)
    for name in ("chelsea", "astronaut"):
        img = photo(name)
        want = ref(img, return_tensors="pt")["pixel_values"]
        got = lens.preprocess(img)
        assert got.shape == want.shape and got.shape[-2] == 40
        assert float((got - want).abs().max()) < 1e-5
    assert lens.preprocess(photo()).shape[-2:] == (40, 60)  # its aspect ratio kept
    info = lens.preprocess_info()
    assert info["mean"] == MEAN and info["std"] == STD
    assert "guess" not in info["source"] and "preprocessor_config.json" in info["source"]


@pytest.mark.parametrize(
    ("processor", "said"),
    [
        (
            lambda: tf.BitImageProcessor(
                size={"shortest_edge": 40}, crop_size={"height": 28, "width": 32}
            ),
            "28×32",
        ),
        (lambda: tf.ViTImageProcessor(size={"longest_edge": 40}), "longest_edge"),
    ],
    ids=["non-square-crop", "longest-edge"],
)
def test_a_geometry_netlens_cannot_give_is_refused_in_one_line(tmp_path, processor, said):
    """A crop of another aspect than the shorter-side resize (BiT-style), and a longest_edge
    that ViT's processor itself cannot run: netlens dropped the processor for the config's size
    and mean/std 0.5, saying no image processor was found."""
    folder = mobilenet_folder(tmp_path, processor())
    with pytest.raises(ModelLoadError) as err:
        netlens.load(folder)
    msg = str(err.value)
    assert_one_clean_line(msg)
    assert said in msg and "mobilenet" in msg and "no image processor" not in msg


# -- 4: no image processor -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["folder", "object"])
def test_a_vit_without_a_processor_warns_that_its_normalisation_is_guessed(tmp_path, how):
    """A ViT saved without preprocessor_config.json is fed its config's image_size with mean/std
    0.5, a guess that was said only in the JSON's source (a ResNet got a warning line)."""
    model = tiny_vit()
    folder = tmp_path / "vit"
    quiet(model.save_pretrained, folder)
    with pytest.warns(NetlensWarning, match="records no preprocessing: netlens guesses mean 0.5"):
        lens = netlens.load(folder if how == "folder" else model)
    info = lens.preprocess_info()
    assert info["size"] == [32, 32] and info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3
    x = lens.preprocess(np.full((40, 40, 3), 255, np.uint8))
    assert torch.allclose(x, torch.ones_like(x))  # white: (1 - 0.5) / 0.5
