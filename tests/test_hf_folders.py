"""Hugging Face model folders (``save_pretrained``): the model, its labels and its image
processor's preprocessing, from the folder alone; checked against transformers itself."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hostile_inputs import assert_one_clean_line
from PIL import Image
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError, NetlensWarning, UnsafeModelError

tf = pytest.importorskip("transformers", reason="Hugging Face folders need the bench extras")
skdata = pytest.importorskip("skimage.data", reason="needs scikit-image's photos")

runner = CliRunner()
LABELS = {0: "cat", 1: "dog", 2: "bird"}


def save(model, processor, folder) -> None:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)


def vit(labels: dict[int, str]):  # noqa: ANN201
    """A tiny ViT classifier (random weights) labelled with ``labels``."""
    from test_hf_models import vit as tiny_vit

    return tiny_vit(labels=labels)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    model = vit(LABELS)
    folder = tmp_path_factory.mktemp("hf") / "vit-cats"
    save(model, tf.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3), folder)
    return model, folder


def processors():  # noqa: ANN201
    """Image processors whose geometry differs: warp; shorter side + crop_pct (ConvNeXt);
    warp + centre crop (DeiT); shorter side + centre crop (BiT)."""
    return {
        "vit": tf.ViTImageProcessor(size={"height": 40, "width": 40}),
        "convnext": tf.ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.875),
        "deit": tf.DeiTImageProcessor(
            size={"height": 46, "width": 46}, crop_size={"height": 40, "width": 40}
        ),
        "bit": tf.BitImageProcessor(
            size={"shortest_edge": 48}, crop_size={"height": 40, "width": 40}
        ),
        # include_top (its default) divides by std twice: ignored, the input was off by 0.99
        "efficientnet": tf.EfficientNetImageProcessor(size={"height": 40, "width": 40}),
        # any rescale factor folds into mean/std: the whole processor was dropped for ImageNet's
        "vit-rescaled": tf.ViTImageProcessor(
            size={"height": 40, "width": 40},
            rescale_factor=1 / 127.5,
            image_mean=[1.0, 1.0, 1.0],
            image_std=[1.0, 1.0, 1.0],
        ),
    }


def test_the_folder_loads_with_its_labels(vit_folder):
    model, folder = vit_folder
    lens = netlens.load(folder)
    assert lens.classes == ["cat", "dog", "bird"]
    assert lens.card["arch"] == "hf:ViTForImageClassification"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(lens.model(x).logits, model(x).logits)


@pytest.mark.parametrize("kind", sorted(processors()))
def test_preprocessing_equals_the_image_processors(kind, vit_folder, tmp_path):
    """Equal to transformers' PIL processor, and within two grey levels of its default
    (torchvision) one. Both place a centre crop with a floored offset, which netlens follows for
    these specs (torchvision rounds it: a pixel apart for ConvNeXt's 67 → 40 here)."""
    _, folder = vit_folder
    here = tmp_path / kind
    save(tf.ViTForImageClassification.from_pretrained(folder), processors()[kind], here)
    lens = netlens.load(here)
    assert kind.split("-")[0] in lens.preprocess_info()["source"].lower()
    pil = tf.AutoImageProcessor.from_pretrained(here, backend="pil")
    fast = tf.AutoImageProcessor.from_pretrained(here)
    for name in ("chelsea", "astronaut", "coffee"):
        img = getattr(skdata, name)()
        mine = lens.preprocess([img])[0]
        quick = fast(images=Image.fromarray(img), return_tensors="pt")["pixel_values"][0]
        assert mine.shape == quick.shape == (3, 40, 40)
        grey = 1 / 255 / float(lens.transform.std[0])  # one grey level at the input
        assert float((mine - quick).abs().max()) <= 2 * grey + 1e-5
        ref = pil(images=Image.fromarray(img), return_tensors="pt")["pixel_values"][0]
        assert float((mine - ref).abs().max()) <= 1e-5


def test_cli_explains_a_label_by_name(vit_folder, tmp_path):
    _, folder = vit_folder
    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(img)
    out = tmp_path / "out"
    res = runner.invoke(app, ["cam", str(folder), str(img), "--target", "dog", "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "cam.json").read_text())
    row = summary["images"][0]
    assert row["target"] == 1 and row["target_name"] == "dog"
    assert row["prediction_name"] in LABELS.values()
    assert summary["run"]["preprocess"]["source"].startswith("Hugging Face preprocessor_config")
    heat = np.load(out / "cat_gradcam_vit.layers.1.layernorm_before_dog.npy")
    assert heat.shape == (32, 32) and heat.std() > 0.05


def test_a_backbone_without_its_head_is_refused(vit_folder, tmp_path):
    """A ``ViTModel`` folder: transformers would give it a random classifier, silently."""
    model, _ = vit_folder
    save(model.vit, tf.ViTImageProcessor(size={"height": 32, "width": 32}), tmp_path / "base")
    with pytest.raises(ModelLoadError) as err:
        netlens.load(tmp_path / "base")
    assert "classifier.weight" in assert_one_clean_line(str(err.value))


def test_folders_that_are_not_image_classifiers_say_so(tmp_path):
    folder = tmp_path / "bert"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = tf.BertConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
        )
        tf.BertModel(cfg).save_pretrained(folder)
    with pytest.raises(ModelLoadError) as err:
        netlens.load(folder)
    assert "image classifier" in assert_one_clean_line(str(err.value))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_mine.Mine"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeModelError, match="--trust"):
        netlens.load(folder)


def test_imagenet_labels_match_wordnet_id_folders(tmp_path):
    """A Hugging Face ImageNet classifier labels its classes as ImageNet does ("tabby, tabby
    cat"): folders in ImageNet's own layout (WordNet IDs) match them."""
    from timm.data import ImageNetInfo

    labels = dict(enumerate(ImageNetInfo().label_descriptions()))
    folder = tmp_path / "imagenet-vit"
    save(vit(labels), tf.ViTImageProcessor(size={"height": 32, "width": 32}), folder)
    lens = netlens.load(folder)
    assert lens.classes[281] == labels[281] and lens.classes.find("n02123045") == 281
    assert lens.classes[134] == "crane (n02012849)" and len(set(lens.classes)) == 1000
    data = tmp_path / "val"
    for wnid in ("n01440764", "n02123045"):
        (data / wnid).mkdir(parents=True)
        Image.fromarray(skdata.chelsea()).save(data / wnid / "a.png")
    assert sorted(label for _, label in lens.dataset(data).items) == [0, 281]


def test_a_model_object_gets_what_its_folder_says(vit_folder):
    """``Lens(AutoModel...from_pretrained(folder))`` in Python: the folder's labels and
    preprocessing, as ``netlens.load(folder)`` gives them."""
    _, folder = vit_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForImageClassification.from_pretrained(folder)
    lens, loaded = netlens.Lens(model), netlens.load(folder)
    assert lens.classes == loaded.classes == ["cat", "dog", "bird"]
    assert lens.transform == loaded.transform


def test_a_model_object_without_a_folder_takes_its_config_size():
    """A ViT made in Python takes its config's image size: a photo of another size failed in
    the dry forward ("Input image size (300*451) doesn't match model (32*32)")."""
    model = vit({0: "a", 1: "b"})
    res = netlens.Lens(model).cam([skdata.chelsea()])
    assert res.heatmaps.shape == (1, 32, 32) and res.rows()[0]["target_name"] in ("a", "b")
    assert "config image_size 32×32" in res.meta["run"]["preprocess"]["source"]


def test_a_segformer_folder_is_explained_as_the_segmenter_it_is(tmp_path):
    """``AutoModelForImageClassification`` made a SegFormer folder a classifier without its
    head (refused: "lacks the classifier's weights"); the class in its config is used now."""
    torch.manual_seed(0)
    labels = {0: "wall", 1: "sky", 2: "person", 3: "tree"}
    cfg = tf.SegformerConfig(
        num_labels=4,
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 128],
        decoder_hidden_size=64,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = tf.SegformerForSemanticSegmentation(cfg).eval()
    folder = tmp_path / "segformer"
    save(model, tf.SegformerImageProcessor(size={"height": 64, "width": 64}), folder)
    lens = netlens.load(folder)
    assert type(lens.model).__name__ == "SegformerForSemanticSegmentation"
    assert lens.classes == ["wall", "sky", "person", "tree"]
    res = lens.cam(skdata.astronaut(), target="region:person")
    assert res.meta["task"] == "dense" and res.meta["input_size"] == [64, 64]
    assert res.meta["layers"][0].startswith("segformer.")  # the encoder, not decode_head
    assert res.meta["target_names"][0][0].startswith("person (")


def test_a_transformers_timm_wrapper_folder_has_its_labels_and_timms_preprocessing(tmp_path):
    """transformers' ``TimmWrapperForImageClassification`` saves its labels as
    ``label_names`` (no ``id2label``) and no image processor: its outputs were named 0, 1, 2
    and its images fed unresized with a guessed ImageNet normalisation (with a warning)."""
    import timm

    if not hasattr(tf, "TimmWrapperForImageClassification"):
        pytest.skip("this transformers has no TimmWrapper")
    config = tf.TimmWrapperConfig(
        architecture="resnet18", num_labels=3, id2label={0: "a", 1: "b", 2: "c"}
    )
    tf.TimmWrapperForImageClassification(config).save_pretrained(tmp_path / "tw")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlensWarning)  # no guessed preprocessing
        lens = netlens.load(tmp_path / "tw")
    assert list(lens.classes) == ["a", "b", "c"]
    expected = timm.data.resolve_model_data_config(lens.model.timm_model)
    assert lens.transform.size == tuple(expected["input_size"][1:])
    assert lens.transform.crop_pct == expected["crop_pct"]
    assert lens.transform.source.endswith("of the timm model it wraps")


@pytest.mark.parametrize(
    ("problem_type", "task"),
    [("multi_label_classification", "multilabel"), ("regression", "regression"), (None, None)],
)
def test_the_configs_problem_type_says_how_the_outputs_are_read(problem_type, task, tmp_path):
    """A multi-label fine-tune (problem_type in config.json, as the Trainer's loss reads it)
    gives independent sigmoids, not a softmax that makes its labels compete; a regression head
    gives its values. From the folder and from the model object alike."""
    model = vit(LABELS)
    model.config.problem_type = problem_type
    folder = tmp_path / "vit"
    save(model, tf.ViTImageProcessor(size={"height": 32, "width": 32}), folder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for lens in (netlens.load(folder), netlens.Lens(model)):
        assert lens.task == task
        with torch.no_grad():
            logits = model(x).logits
            got = lens.probabilities(lens.output(x))
        want = {
            "multilabel": torch.sigmoid(logits),
            "regression": logits,
            None: torch.softmax(logits, 1),
        }[task]
        assert torch.allclose(got, want, atol=1e-6)
