"""Trusted pickles that name functions and classes of the script that saved them (``__main__``):
read when the model does not need them, refused in one line naming them when it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_script

import netlens
from netlens.errors import ModelLoadError
from netlens.models.missing_globals import trusted_load
from netlens.models.pickled import _unpickling_failed

SAVE = """
import sys, torch
from torch import nn

def my_collate(batch): return batch  # a training helper, saved beside the model

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
    def forward(self, x): return self.fc(self.conv(x).mean((2, 3)))

class Swish(nn.Module):
    def forward(self, x): return x * torch.sigmoid(x)

def seq(*extra):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), *extra, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))

out = sys.argv[1]
torch.save({"model": seq(nn.ReLU()), "collate_fn": my_collate, "classes": ["cat", "dog"]},
           f"{out}/with_helper.pt")
torch.save(Net(), f"{out}/main_class.pt")
torch.save(seq(Swish()), f"{out}/main_part.pt")
model = seq(nn.ReLU()); model.post = my_collate
torch.save(model, f"{out}/main_attribute.pt")
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("main")
    done = run_script(root / "train.py", SAVE, root, timeout=300)
    assert done.returncode == 0, done.stderr
    return root


def test_a_helper_the_model_does_not_need_is_not_needed(saved, tmp_path):
    """``{"model": ..., "collate_fn": my_collate}``: the model loads with its classes, and
    the outputs say which names were not found."""
    lens = netlens.load(saved / "with_helper.pt", trust=True)
    assert list(lens.classes) == ["cat", "dog"]
    assert lens.card["not_imported"] == ["__main__.my_collate"]
    x = torch.rand(1, 3, 16, 16)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    ).eval()
    assert torch.equal(lens.model(x), ref(x))
    result = lens.cam(x, target="dog")
    assert result.meta["run"]["model"]["not_imported"] == ["__main__.my_collate"]


def test_a_stand_in_that_is_called_says_which_name_was_needed(saved):
    obj, missing = trusted_load(saved / "with_helper.pt")
    assert missing == ["__main__.my_collate"]
    with pytest.raises(ModelLoadError, match="my_collate is needed here.*script or notebook"):
        obj["collate_fn"]([1, 2])


@pytest.mark.parametrize(
    ("file", "name", "how"),
    [
        ("main_class.pt", "Net", "its model class Net"),
        ("main_part.pt", "Swish", "the model needs Swish"),
        ("main_attribute.pt", "my_collate", "the model needs my_collate"),
    ],
)
def test_a_model_made_of_missing_names_is_refused_naming_them(saved, file, name, how):
    with pytest.raises(ModelLoadError) as info:
        netlens.load(saved / file, trust=True)
    msg = str(info.value)
    assert how in msg and "__main__" in msg and "state_dict" in msg, msg
    assert "\n" not in msg


def test_the_cli_refuses_a_missing_model_class_in_one_line(saved, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "netlens", "cam", str(saved / "main_class.pt"), "--trust"]
        + ["-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Net" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_arch_naming_the_script_finds_the_pickled_models_main_names(saved, tmp_path):
    """The refusal says to name the file that defines the class with --arch FILE.py:Net; given
    it, the same refusal came back. The pickle's ``__main__`` names are found in that file."""
    script = tmp_path / "defs.py"  # the training script's classes (its saving code guarded)
    script.write_text(SAVE.split("out = sys.argv[1]")[0])
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for file, cls in [("main_class.pt", "Net"), ("main_part.pt", "Swish")]:
        lens = netlens.load(saved / file, trust=True, arch=f"{script}:{cls}", input_size=16)
        assert type(lens.model).__name__ in (cls, "Sequential")
        with torch.no_grad():
            assert lens.output(x).shape == (1, 2)
    out = tmp_path / "o"
    done = subprocess.run(
        [sys.executable, "-m", "netlens", "kernels", str(saved / "main_class.pt"), "--trust"]
        + ["--arch", f"{script}:Net", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "kernels.json").exists()


def test_names_outside_main_still_fail_as_before(tmp_path):
    """Only ``__main__`` is lenient: a module that lost a name is a real mismatch."""
    import types

    mod = types.ModuleType("netlens_gone_module")
    sys.modules[mod.__name__] = mod

    def gone() -> None: ...

    gone.__module__, gone.__qualname__ = mod.__name__, "gone"
    mod.gone = gone
    torch.save({"fn": gone, "w": torch.zeros(1)}, tmp_path / "f.pt")
    del mod.gone
    try:
        with pytest.raises(AttributeError):
            trusted_load(tmp_path / "f.pt")
    finally:
        del sys.modules[mod.__name__]


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ("fastai", "pip install fastai"),
        ("fastai.learner", "pip install fastai"),
        ("pytorch_lightning.core", "pip install pytorch-lightning"),
        ("fastcore.transform", "fastai<2.8"),
        ("my_models", "PYTHONPATH"),
    ],
)
def test_a_missing_package_says_what_to_install(missing, says):
    exc = ModuleNotFoundError(f"No module named '{missing}'", name=missing)
    assert says in _unpickling_failed("model.pkl", exc)


def test_a_plain_pickle_of_a_learner_like_object_is_not_taken_for_a_learner(tmp_path):
    """Duck typing stops at fastai's own classes: an object with .model and .dls of another
    package is not read as a fastai Learner."""
    from netlens.models.fastai_learner import is_learner

    class Holder:
        def __init__(self) -> None:
            self.model, self.dls = torch.nn.Linear(2, 2), object()

    assert not is_learner(Holder())
