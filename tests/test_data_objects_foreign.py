"""Data objects of other libraries as ``data=``: fastai's ``learn.dls``, ``learn.dls.valid`` (a
``TfmdDL``) and ``learn.dls.valid_ds`` (``Datasets``), checked against fastai's own
``learn.get_preds``; and bare uint8 image tensors for the analyzers that read no labels.

fastai patches torch when imported, so the fastai checks run in a subprocess (a script, as
tests/test_fastai_learner.py does) that prints what it found as JSON.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import run_script
from hostile_inputs import assert_one_clean_line
from torch import nn

import netlens

FASTAI = """
import warnings; warnings.simplefilter("ignore")
import json, pathlib, sys, numpy as np, torch
from PIL import Image
from fastai.vision.all import *
import netlens
from netlens.errors import DataError

torch.set_num_threads(1)
root = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(0)
for cls, col in (("reds", (200, 30, 30)), ("blues", (30, 30, 200))):
    (root / cls).mkdir(parents=True)
    for i in range(6):  # 3:2 images: fastai's Resize crops their middle
        noise = rng.integers(0, 50, (40, 60, 3))
        Image.fromarray((noise + np.array(col)).clip(0, 255).astype(np.uint8)).save(
            root / cls / f"{i}.png")
set_seed(0)
dls = ImageDataLoaders.from_folder(
    root, valid_pct=0.5, seed=0, bs=4, num_workers=0, item_tfms=Resize(32),
    batch_tfms=Normalize.from_stats(*imagenet_stats))
learn = vision_learner(dls, resnet18, pretrained=False); learn.no_bar()
probs, targets = learn.get_preds(dl=dls.valid)
lens = netlens.load(learn)
# another model, its classes in the other order: labels follow the names, not the numbers
other = netlens.Lens(learn.model, {"size": (32, 32)}, classes=["reds", "blues"])
out = {"vocab": [str(v) for v in dls.vocab], "targets": targets.tolist(),
       "fastai_accuracy": float((probs.argmax(1) == targets).float().mean())}
unlabelled = dls.test_dl(dls.valid.items)
given = {"learn.dls": learn.dls, "learn.dls.valid": learn.dls.valid,
         "learn.dls.valid_ds": learn.dls.valid_ds,
         "test_dl(with_labels=True)": dls.test_dl(dls.valid.items, with_labels=True)}
for name, data in given.items():
    ds = lens.dataset(data)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        mine = lens.probabilities(lens.output(x))
    ablated = lens.ablate(data, metric="accuracy", layers="0.4.0")
    kl = lens.ablate(data, metric="kl", layers="0.4.0")
    stats = lens.run("stats", data, layers="0.4")
    mapped = other.dataset(data)
    out[name] = {
        "labels": [int(ds[i][1]) for i in range(len(ds))],
        "prob_diff": float((mine - probs).abs().max()),
        "accuracy": float(ablated.baseline["value"]),
        "kl_rows": len(kl.table),
        "stats_ok": stats is not None,
        "other_labels": [int(mapped[i][1]) for i in range(len(mapped))],
    }
out["evaluate_ok"] = lens.evaluate(learn.dls.valid, methods="gradcam", limit=2) is not None
out["unlabelled_stats_ok"] = lens.run("stats", unlabelled, layers="0.4") is not None
try:
    lens.ablate(unlabelled, metric="accuracy", layers="0.4.0")
    out["unlabelled_accuracy"] = "ran"
except DataError as exc:
    out["unlabelled_accuracy"] = str(exc)
multi = DataBlock(  # multi-label: the reds also tagged "odd"
    blocks=(ImageBlock, MultiCategoryBlock), get_items=get_image_files,
    get_y=lambda p: [p.parent.name] + (["odd"] if p.parent.name == "reds" else []),
    splitter=RandomSplitter(0.5, seed=0), item_tfms=Resize(32)).dataloaders(root, bs=4)
try:
    lens.dataset(multi.valid)
    out["multi_label"] = "ran"
except DataError as exc:
    out["multi_label"] = str(exc)
out["multi_label_stats_ok"] = lens.run("stats", multi.valid, layers="0.4") is not None
try:
    lens.run("stats", DataLoaders(dls.train), layers="0.4")
    out["no_valid"] = "ran"
except DataError as exc:
    out["no_valid"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fastai_run(tmp_path_factory) -> dict:
    if importlib.util.find_spec("fastai") is None:
        pytest.skip("needs fastai (the dev extras)")
    root = tmp_path_factory.mktemp("fastai_data")
    done = run_script(root / "check.py", FASTAI, root / "images")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


FASTAI_DATA = ["learn.dls", "learn.dls.valid", "learn.dls.valid_ds", "test_dl(with_labels=True)"]


@pytest.mark.parametrize("name", FASTAI_DATA)
def test_fastai_data_gives_the_model_what_get_preds_gives_it(fastai_run, name):
    """The items of learn.dls.valid (learn.dls means it; its Datasets; a labelled test_dl of the
    same files), through the lens of netlens.load(learn): the probabilities and labels fastai's
    learn.get_preds(dl=learn.dls.valid) gives, in its order."""
    got = fastai_run[name]
    assert got["prob_diff"] < 1e-5
    assert got["labels"] == fastai_run["targets"]
    assert got["accuracy"] == pytest.approx(fastai_run["fastai_accuracy"])


@pytest.mark.parametrize("name", FASTAI_DATA)
def test_fastai_data_runs_the_analyzers_that_read_no_labels(fastai_run, name):
    got = fastai_run[name]
    assert got["stats_ok"] and got["kl_rows"] > 0


@pytest.mark.parametrize("name", FASTAI_DATA)
def test_fastai_labels_follow_the_vocab_names_to_another_models_classes(fastai_run, name):
    """fastai numbers the classes by dls.vocab (blues, reds); a model whose classes are
    (reds, blues) gets each item's label by name."""
    assert fastai_run["vocab"] == ["blues", "reds"]
    assert fastai_run[name]["other_labels"] == [1 - t for t in fastai_run["targets"]]


def test_evaluate_takes_a_fastai_dataloader(fastai_run):
    assert fastai_run["evaluate_ok"]


def test_an_unlabelled_test_dl_feeds_label_free_analyzers_and_says_what_labels_need(fastai_run):
    assert fastai_run["unlabelled_stats_ok"]
    line = assert_one_clean_line(fastai_run["unlabelled_accuracy"])
    assert "with_labels=True" in line


def test_multi_label_fastai_data_is_one_line_where_labels_are_read(fastai_run):
    """netlens reads one class per image: an item tagged with two classes is refused in one
    line when labels are read, and is fine for the analyzers that read none."""
    assert "marks 2 classes" in assert_one_clean_line(fastai_run["multi_label"])
    assert fastai_run["multi_label_stats_ok"]


def test_dataloaders_without_a_validation_set_say_which_to_pass(fastai_run):
    line = assert_one_clean_line(fastai_run["no_valid"])
    assert "no validation set" in line and "dls.train" in line


# -- uint8 image tensors for the analyzers that read no labels ---------------------------------


def _lens() -> netlens.Lens:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    return netlens.Lens(net, {"size": (16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3})


def _pixels() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (6, 3, 20, 20), dtype=np.uint8))


@pytest.mark.parametrize("shape", ["tensor", "pair"])
@pytest.mark.parametrize("analyzer", ["stats", "top-activations"])
def test_uint8_image_tensors_are_preprocessed_for_label_free_analyzers(shape, analyzer):
    """docs/data.md: uint8 tensors are pixels, preprocessed as the model's images; a bare
    tensor or an (images, labels) pair gives what the same pixels in a TensorDataset give."""
    lens, raw = _lens(), _pixels()
    data = raw if shape == "tensor" else (raw, torch.zeros(len(raw), dtype=torch.long))
    as_dataset = torch.utils.data.TensorDataset(raw, torch.zeros(len(raw), dtype=torch.long))
    if analyzer == "stats":
        opts = {"layers": "2"}
    else:
        opts = {"layer": "2", "k": 2, "max_channels": 2}
    got = lens.run(analyzer, data, batch_size=4, **opts)
    want = lens.run(analyzer, as_dataset, batch_size=4, **opts)
    assert _numbers(got) == _numbers(want)


def test_float_image_tensors_are_taken_as_preprocessed():
    """Float tensors are the model's input already: not preprocessed again."""
    from netlens.analyzers.unlabelled import unlabelled_data

    lens = _lens()
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(unlabelled_data(lens, x)[1][0], x[1])
    pixels = unlabelled_data(lens, _pixels())[1][0]
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 16, 16)


def _numbers(result) -> str:
    """The numbers of a result (its table), comparable across runs."""
    return str(result.table)
