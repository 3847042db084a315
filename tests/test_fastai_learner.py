"""fastai Learners (``learn.export()``): their model, class names, task and input pipeline, checked
against fastai's own ``learn.predict`` and pytorch-grad-cam on real photos.

fastai patches torch and pandas objects when imported, so everything that imports it runs in a
subprocess: the Learners are trained and exported by a script (its functions live in its
``__main__``, as a notebook's do), and each check is the script a user would run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script
from hostile_inputs import assert_one_clean_line

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fastai") is None or importlib.util.find_spec("skimage") is None,
    reason="needs fastai and scikit-image (the dev extras)",
)

MAKE = """
import warnings; warnings.simplefilter("ignore")
import numpy as np, pathlib, skimage.data as sd, sys
from fastai.vision.all import *
import PIL.Image as Image

root = pathlib.Path(sys.argv[1])
photos = root / "photos"; photos.mkdir()
rng = np.random.default_rng(0)
for name, arr in {"Chelsea": sd.chelsea(), "coffee": sd.coffee(), "Astronaut": sd.astronaut(),
                  "rocket": sd.rocket()}.items():
    h, w = arr.shape[:2]
    for i in range(3):  # crops of other aspect ratios: a centre crop shows in the maps
        y, x = rng.integers(0, h // 4), rng.integers(0, w // 4)
        Image.fromarray(arr[y:y + 3 * h // 4, x:x + 3 * w // 4]).save(photos / f"{name}_{i}.jpg")

def is_cat(name): return name[0].isupper()  # the pets tutorial's labelling function
def tags(p): return ["upper" if p.name[0].isupper() else "lower", "photo"] + (
    ["round"] if "coffee" in p.name else [])

set_seed(0)
# the fastai book's presizing: a large item crop, then the batch transforms' smaller one
pets = ImageDataLoaders.from_name_func(
    photos, get_image_files(photos), valid_pct=0.25, seed=1, label_func=is_cat, bs=4,
    item_tfms=Resize(96),
    batch_tfms=[*aug_transforms(size=48), Normalize.from_stats(*imagenet_stats)])
learn = vision_learner(pets, resnet18, pretrained=False)
learn.no_bar(); learn.fit(1); learn.export(root / "pets.pkl"); learn.save(root / "stage1")
multi = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_items=get_image_files, get_y=tags,
                  splitter=RandomSplitter(0.25, seed=1), item_tfms=Resize(64, method="squish"))
learn = vision_learner(multi.dataloaders(photos, bs=4), resnet18, pretrained=False)
learn.no_bar(); learn.fit(1); learn.export(root / "multi.pkl")
"""

CHECK = """
import warnings; warnings.simplefilter("ignore")
import json, sys, numpy as np, torch, netlens
from fastai.vision.all import load_learner, PILImage
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

root, name, photo = sys.argv[1:4]
learn = load_learner(f"{root}/{name}"); learn.no_bar()
_, _, probs = learn.predict(PILImage.create(photo))
fastai_input = learn.dls.test_dl([photo]).one_batch()[0].as_subclass(torch.Tensor)
out = {}
lenses = {"file": netlens.load(f"{root}/{name}", trust=True), "object": netlens.load(learn)}
for how, lens in lenses.items():
    batch = lens.batch([photo])
    with torch.no_grad():
        mine = lens.probabilities(lens.output(batch.tensor))[0]
    out[how] = {"classes": list(lens.classes), "task": lens.task,
                "input_diff": float((batch.tensor - fastai_input).abs().max()),
                "prob_diff": float((mine - probs).abs().max()), "source": lens.transform.source}
lens = netlens.load(f"{root}/{name}", trust=True)
target = int(probs.argmax())
cam = lens.cam(photo, target=target, layer="0.7")
with GradCAM(learn.model, [learn.model[0][7]]) as explainer:
    ref = explainer(input_tensor=fastai_input, targets=[ClassifierOutputTarget(target)])[0]
a, b = cam.heatmaps[0].ravel(), ref.ravel()
out["cam_r"] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
out["cam_shape"] = list(cam.heatmaps.shape[-2:])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fastai")
    done = run_script(root / "make_learners.py", MAKE, root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def check(root: Path, name: str, photo: str) -> dict:
    done = run_script(root / "check.py", CHECK, root, name, root / "photos" / photo)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def netlens_cli(*args: object) -> subprocess.CompletedProcess:
    """The command line, as a user runs it (in its own process, as fastai needs)."""
    return subprocess.run(
        [sys.executable, "-m", "netlens", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_an_exported_learner_is_explained_on_the_input_learn_predict_gives(exported):
    """Presizing (Resize(96) crop, then aug_transforms(size=48) and ImageNet Normalize): the
    model sees what fastai's pipeline makes of the photo, bit for bit, and gives the
    probabilities learn.predict gives; classes are the Learner's vocab (False, True from the
    pets tutorial's is_cat, a function of the script that saved it)."""
    got = check(exported, "pets.pkl", "Chelsea_0.jpg")
    for how in ("file", "object"):
        assert got[how]["classes"] == ["False", "True"]
        assert got[how]["task"] == "multiclass"
        assert got[how]["input_diff"] == 0.0
        assert got[how]["prob_diff"] < 1e-5
        assert "fastai" in got[how]["source"] and "Resize(96×96, crop)" in got[how]["source"]
    assert got["cam_shape"] == [48, 48]
    assert got["cam_r"] is not None and got["cam_r"] > 0.999  # pytorch-grad-cam, fastai's input


def test_a_multilabel_learner_reads_its_outputs_as_sigmoids(exported):
    """Trained with BCEWithLogitsLossFlat: learn.predict's probabilities are independent
    sigmoids, and so are netlens' (a softmax would make them sum to one)."""
    got = check(exported, "multi.pkl", "coffee_1.jpg")
    for how in ("file", "object"):
        assert got[how]["classes"] == ["lower", "photo", "round", "upper"]
        assert got[how]["task"] == "multilabel"
        assert got[how]["input_diff"] == 0.0
        assert got[how]["prob_diff"] < 1e-5


def test_the_cli_draws_the_map_on_what_the_model_saw(exported, tmp_path):
    """The model saw a centre crop of a 3:2 photo: the overlay is that square input, not the
    whole photo with the map stretched over it."""
    import numpy as np
    from PIL import Image

    out = tmp_path / "cam"
    photo = exported / "photos" / "rocket_1.jpg"
    done = netlens_cli("cam", exported / "pets.pkl", photo, "--trust", "-o", out)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "cam.json").read_text())
    assert meta["run"]["model"]["class_names"] == "pets.pkl's 'dls.vocab'"
    assert meta["run"]["preprocess"]["engine"] == "function"
    assert meta["run"]["preprocess"]["resize"] is None  # fastai's pipeline decides, not netlens
    name = meta["images"][0]["prediction_name"]
    assert name in ("False", "True")
    overlay = np.asarray(Image.open(out / f"rocket_1_gradcam_0_{name}.png"))
    assert Image.open(photo).size[0] != Image.open(photo).size[1]
    assert overlay.shape[0] == overlay.shape[1]


def test_an_exported_learner_needs_trust(exported, tmp_path):
    done = netlens_cli("cam", exported / "pets.pkl", "-o", tmp_path / "o")
    assert done.returncode == 1
    assert "--trust" in assert_one_clean_line(done.stderr)
    assert not (tmp_path / "o").exists()


def test_weights_from_learn_save_say_to_export_the_learner(exported, tmp_path):
    """learn.save() keeps the weights of fastai's own body and head, not how to build them:
    no --arch rebuilds them, and the line says what does."""
    done = netlens_cli("cam", exported / "stage1.pth", "-o", tmp_path / "o")
    assert done.returncode == 1
    assert "learn.export" in assert_one_clean_line(done.stderr)
