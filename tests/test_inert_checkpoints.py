"""Training checkpoints whose metadata holds objects of other people's classes (Lightning's
hyper_parameters with a config object and an optimizer's ``functools.partial``, as the
lightning-hydra-template saves them) are read without importing or running those classes."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import netlens
from netlens.errors import UnsafeModelError

MODULE = """
class AttributeDict(dict):
    def __getattr__(self, key):
        return self[key]


class Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Slotted:
    __slots__ = ("a",)

    def __init__(self):
        self.a = 1


IMPORTED = []
IMPORTED.append("the module ran")
"""


class Exploit:
    """Unpickling this runs ``run(["touch", path])`` (a REDUCE of a global), the attack
    weights_only stops."""

    def __init__(self, run, path: Path) -> None:
        self.run, self.path = run, path

    def __reduce__(self) -> tuple:
        return (self.run, (["touch", str(self.path)],))


def _saved_with_a_module_that_is_gone(tmp_path: Path, make) -> Path:
    (tmp_path / "hp_code.py").write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import hp_code  # noqa: PLC0415 - the trainer's own code, gone after saving

        path = tmp_path / "last.ckpt"
        torch.save(make(hp_code), path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("hp_code", None)
        (tmp_path / "hp_code.py").unlink()
    return path


def test_lightning_hyper_parameters_of_foreign_classes_do_not_stop_the_weights(tmp_path):
    net = torchvision.models.resnet18(num_classes=3).eval()

    def make(hp_code):
        hparams = hp_code.AttributeDict(
            class_names=["cat", "dog", "bird"],
            optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
            config=hp_code.Config(width=64, layers=[1, 2]),
            slots=hp_code.Slotted(),
        )
        state = {f"model.{k}": v for k, v in net.state_dict().items()}
        return {"state_dict": state, "hyper_parameters": hparams, "epoch": 3}

    path = _saved_with_a_module_that_is_gone(tmp_path, make)
    with pytest.raises(Exception, match="hp_code"):
        torch.load(path, weights_only=False)  # their code is what a plain load needs
    lens = netlens.load(path, arch="tv:resnet18")
    assert "hp_code" not in sys.modules
    assert list(lens.classes) == ["cat", "dog", "bird"]
    assert lens.classes.source == "last.ckpt's 'hyper_parameters.class_names'"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lens.model(x), net(x))
    held = lens.card["not_imported"]
    assert lens.cam(torch.rand(1, 3, 64, 64)).meta["run"]["model"]["not_imported"] == held
    assert {"hp_code.AttributeDict", "hp_code.Config", "functools.partial"} <= set(held)


def test_code_a_checkpoint_would_run_stays_unrun(tmp_path):
    """A REDUCE of ``subprocess.check_call`` in the metadata: the stand-in is called, not the
    process; ``os.system`` (a module torch blocks outright) leaves the file to --trust."""
    import subprocess

    net = torchvision.models.resnet18(num_classes=2).eval()
    proof = tmp_path / "pwned"
    extra = Exploit(subprocess.check_call, proof)
    torch.save({"state_dict": net.state_dict(), "extra": extra}, tmp_path / "x.pth")
    lens = netlens.load(tmp_path / "x.pth", arch="tv:resnet18")
    assert not proof.exists()
    assert any(n.endswith(".check_call") for n in lens.card["not_imported"])
    extra = Exploit(os.system, proof)
    torch.save({"state_dict": net.state_dict(), "extra": extra}, tmp_path / "y.pth")
    with pytest.raises(UnsafeModelError, match="--trust"):
        netlens.load(tmp_path / "y.pth", arch="tv:resnet18")
    assert not proof.exists()


def test_a_whole_pickled_model_still_needs_trust(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(UnsafeModelError, match="--trust"):
        netlens.load(tmp_path / "whole.pt")
    torch.save({"model": model, "epoch": 1}, tmp_path / "dict.pt")  # no state_dict beside it
    with pytest.raises(UnsafeModelError, match="--trust"):
        netlens.load(tmp_path / "dict.pt")
