"""A Hugging Face model gets exactly what its saved image processor makes: netlens' tensor
against ``AutoImageProcessor.from_pretrained(folder, local_files_only=True)(images=...)``, for
the old feature-extractor files many Hub folders still hold, processors that flip the channels
(MobileViT, PP-LCNet) or resize their own way (LeViT), grayscale models, and a processor passed
as ``preprocess=``. Tiny models with random weights, built from configs (nothing downloaded)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import netlens
from netlens.errors import ModelLoadError, NetlensError

tf = pytest.importorskip("transformers", reason="Hugging Face folders need the bench extras")
skdata = pytest.importorskip("skimage.data", reason="needs scikit-image's photos")

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# preprocessor_config.json as the Hub folders of these models hold it, verbatim (old format:
# sizes as plain numbers, feature_extractor_type, keys left to the class's defaults)
OLD_FORMAT = {
    "google/vit-base-patch16-224": {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 224,
    },
    "microsoft/resnet-50": {
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ConvNextFeatureExtractor",
        **IMAGENET,
        "resample": 3,
        "size": 224,
    },
    "facebook/deit-base-distilled-patch16-224": {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "DeiTFeatureExtractor",
        **IMAGENET,
        "resample": 3,
        "size": 256,
    },
    "apple/mobilevit-small": {  # flips to B, G, R; no do_normalize: the class never normalises
        "crop_size": 256,
        "do_center_crop": True,
        "do_flip_channel_order": True,
        "do_resize": True,
        "feature_extractor_type": "MobileViTFeatureExtractor",
        "resample": 2,
        "size": 288,
    },
}


def quiet(fn, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def tiny_vit(channels: int = 3, size: int = 32):  # noqa: ANN201
    torch.manual_seed(0)
    cfg = tf.ViTConfig(
        image_size=size,
        patch_size=8,
        num_channels=channels,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    return tf.ViTForImageClassification(cfg).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny ViT's folder, without an image processor: each test adds its own."""
    folder = tmp_path_factory.mktemp("hf") / "vit"
    quiet(tiny_vit().save_pretrained, folder)
    return folder


def with_processor(model_dir, tmp_path, processor):  # noqa: ANN001, ANN201
    """The tiny ViT's folder with ``processor`` (an image processor or a config dict)."""
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    if isinstance(processor, dict):
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    else:
        quiet(processor.save_pretrained, folder)
    return folder


def processors_output(folder, img: np.ndarray, **kw) -> torch.Tensor:  # noqa: ANN001
    proc = quiet(tf.AutoImageProcessor.from_pretrained, folder, local_files_only=True, **kw)
    return proc(images=Image.fromarray(img), return_tensors="pt")["pixel_values"]


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert float((got - want).abs().mean()) < 1e-4


@pytest.mark.parametrize("hub", list(OLD_FORMAT))
def test_an_old_format_processor_file_is_read_as_transformers_reads_it(hub, model_dir, tmp_path):
    """``"size": 224`` as a plain number made netlens drop the file for a guess (the config's
    image size, mean/std 0.5): mean |diff| 0.41-0.48, MobileViT's input 224² for 256²."""
    folder = with_processor(model_dir, tmp_path, OLD_FORMAT[hub])
    lens = netlens.load(folder)
    kind = OLD_FORMAT[hub]["feature_extractor_type"].replace("FeatureExtractor", "Image")
    assert kind in lens.preprocess_info()["source"]
    for name in ("chelsea", "astronaut"):
        img = getattr(skdata, name)()
        assert_same(lens.preprocess(img), processors_output(folder, img))


def test_mobilevit_takes_bgr_unnormalised(model_dir, tmp_path):
    """MobileViT's processor flips R, G, B to B, G, R and does not normalise (its class has
    no such step): netlens fed R, G, B with mean/std 0.5 (mean |diff| 0.58)."""
    proc = tf.MobileViTImageProcessor(size={"shortest_edge": 288}, crop_size=256, resample=2)
    folder = with_processor(model_dir, tmp_path, proc)
    lens = netlens.load(folder)
    info = lens.preprocess_info()
    assert info["channel_order"] == "bgr" and info["mean"] == [0.0] * 3
    img = skdata.chelsea()
    assert_same(lens.preprocess(img), processors_output(folder, img))
    assert (
        float((lens.preprocess(img) - processors_output(folder, img, backend="pil")).abs().max())
        < 1e-5
    )


def test_pp_lcnet_takes_bgr_of_its_shorter_side_resize(model_dir, tmp_path):
    """PP-LCNet's processor normalises, then flips to B, G, R, after resizing the shorter side
    to ``resize_short`` (aspect kept): netlens fed R, G, B of a 256² squash (mean |diff| 1.2).
    Its longer side is rounded where netlens truncates: a 300×450 photo, where both agree."""
    folder = with_processor(model_dir, tmp_path, tf.PPLCNetImageProcessor())
    lens = netlens.load(folder)
    info = lens.preprocess_info()
    assert info["channel_order"] == "bgr" and info["mean"] == [0.485, 0.456, 0.406]
    for img in (skdata.chelsea()[:, :450], skdata.astronaut()):
        assert_same(lens.preprocess(img), processors_output(folder, img))


def test_levit_resizes_to_256_224ths_of_its_shortest_edge(model_dir, tmp_path):
    """LeViT's processor resizes the shorter side to int(256/224 · shortest_edge), then crops
    crop_size; netlens resized it to shortest_edge (mean |diff| 0.43)."""
    folder = with_processor(model_dir, tmp_path, tf.LevitImageProcessor())
    lens = netlens.load(folder)
    assert lens.preprocess_info()["resize"] == [256, 256]
    for name in ("chelsea", "astronaut"):
        img = getattr(skdata, name)()
        assert_same(lens.preprocess(img), processors_output(folder, img))
        pil = processors_output(folder, img, backend="pil")
        assert float((lens.preprocess(img) - pil).abs().max()) < 1e-5


def test_a_crop_larger_than_the_resize_is_refused_in_plain_words(model_dir, tmp_path):
    """MobileViT's class defaults (shorter side 224, crop 256) pad the crop with black, which
    a spec cannot say: this stopped with "crop_pct must be in (0, 1], not 1.142…"."""
    folder = with_processor(model_dir, tmp_path, tf.MobileViTImageProcessor())
    with pytest.raises(ModelLoadError) as err:
        netlens.load(folder)
    msg = str(err.value)
    assert "crop_pct" not in msg and "256×256" in msg and "224" in msg and "\n" not in msg


def test_perceiver_crops_its_share_of_the_shorter_side(model_dir, tmp_path):
    """Perceiver's crop_size (256) larger than its size (224) is the share of the shorter side
    it crops before resizing (stopped with the crop_pct error). Resized then cropped here: equal
    but for the crop's edge pixels on a square photo (crop-first: its int() of 0.875 · side)."""
    folder = with_processor(model_dir, tmp_path, tf.PerceiverImageProcessor())
    lens = netlens.load(folder)
    img = skdata.astronaut()
    got, want = lens.preprocess(img), processors_output(folder, img)
    assert got.shape == want.shape and float((got - want).abs().mean()) < 1e-3


def test_a_grayscale_folder_takes_one_channel(tmp_path):
    """A ViT with num_channels=1: the folder route fed three channels ("Expected 1 but got
    3" in the dry forward) where the model-object route fed one."""
    folder = tmp_path / "gray"
    quiet(tiny_vit(channels=1).save_pretrained, folder)
    proc = tf.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.13], image_std=[0.3]
    )
    quiet(proc.save_pretrained, folder)
    img = np.asarray(Image.fromarray(skdata.chelsea()).convert("L"))
    lens = netlens.load(folder)
    assert_same(lens.preprocess(img), processors_output(folder, img))
    assert lens.cam(img).heatmaps.shape == (1, 32, 32)


def test_the_models_own_processor_as_preprocess():
    """``preprocess=ViTImageProcessor(...)`` was refused with the processor's whole JSON in
    the message; it is called as transformers calls it and its pixel_values used."""
    proc = tf.ViTImageProcessor(size={"height": 32, "width": 32}, **IMAGENET)
    lens = netlens.load(tiny_vit(), preprocess=proc)
    img = skdata.chelsea()
    want = proc(images=Image.fromarray(img), return_tensors="pt")["pixel_values"]
    assert_same(lens.preprocess(img), want)
    assert "ViTImageProcessor" in lens.preprocess_info()["source"]


class _Chatty:
    """A callable whose repr is long (as an image processor's is) and answers the wrong thing."""

    def __repr__(self) -> str:
        return "Chatty " + "{...} " * 200

    def __call__(self, pil: Image.Image) -> str:
        return "not a tensor"


def test_a_callable_is_named_by_its_type_not_its_repr():
    lens = netlens.load(tiny_vit(), preprocess=_Chatty())
    with pytest.raises(NetlensError) as err:
        lens.preprocess(skdata.chelsea())
    msg = str(err.value)
    assert "_Chatty" in msg and "{...}" not in msg and len(msg) < 200
