"""netlens train's transfer options: ``--init`` matches the head's rows by class name, ``--freeze
up-to`` cuts in the order the forward pass runs, ``--trust`` for an init that is a whole pickled
model, and a model object given as ``arch`` is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import ModelLoadError, NetlensError, NetlensWarning
from netlens.lens import Lens
from netlens.plugins.manager import PluginHost
from netlens.train.config import TrainConfig
from netlens.train.transfer import call_order, freeze, init_from, load_init

pytestmark = [pytest.mark.usefixtures("one_thread")]


class HeadFirst(nn.Module):
    """The classifier defined before the layers that run ahead of it."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.head = nn.Linear(8, num_classes)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(self.stem(x))).flatten(1))


def _model(num_classes: int, seed: int) -> HeadFirst:
    torch.manual_seed(seed)
    return HeadFirst(num_classes).eval()


def _x() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))


# -- 4. --init: the head's rows by class name ------------------------------------------------
OLD = ["cat", "dog", "fusée", "camera man"]


@pytest.mark.parametrize(
    "new",
    [
        ["a rocket", "camera man", "cat", "dog"],  # one renamed: the folders sort otherwise
        ["dog", "Camera_Man", "cat", "zebra", "fusée"],  # one more class, another spelling
    ],
)
@pytest.mark.parametrize("ran", [True, False])
def test_init_matches_the_heads_rows_by_class_name(new: list[str], ran: bool) -> None:
    from netlens.train.transfer import init_notes

    old_model = _model(len(OLD), 0)
    init = Lens(old_model, classes=OLD)
    model = _model(len(new), 1)
    fresh_w, fresh_b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    x = _x()
    order = call_order(model, x)[1] if ran else None
    notes = init_notes(model, init, "old.pt", new, order)
    with torch.no_grad():  # the reference: the old model's own scores, class by class
        before, after = old_model(x), model.eval()(x)
    same = {"camera man": "Camera_Man"}
    for i, name in enumerate(new):
        theirs = next((j for j, c in enumerate(OLD) if c == name or same.get(c) == name), None)
        if theirs is None:  # new to this run: as the initialiser made it
            assert torch.equal(model.head.weight[i], fresh_w[i])
            assert torch.equal(model.head.bias[i], fresh_b[i])
        else:
            torch.testing.assert_close(after[:, i], before[:, theirs])
    fresh = [c for c in new if c not in OLD and c not in same.values()]
    assert notes[1] == (
        f"init from old.pt: the head's rows matched by class name for {len(new) - len(fresh)} "
        f"of {len(new)} classes, fresh for {len(fresh)} ({', '.join(map(repr, fresh))})"
    )


def test_init_without_the_checkpoints_class_names_copies_by_position_and_warns() -> None:
    old_model = _model(4, 0)
    model = _model(4, 1)
    with pytest.warns(NetlensWarning, match="names no classes, so its head's 4 rows were copied"):
        copied, fresh = init_from(model, Lens(old_model), "w.pth", ["d", "c", "b", "a"])
    assert copied == len(model.state_dict()) and fresh == []
    assert torch.equal(model.head.weight, old_model.head.weight)


# -- 5. --freeze up-to:LAYER in the order the forward pass runs ------------------------------
def test_freeze_up_to_cuts_in_call_order_and_keeps_the_head() -> None:
    model = _model(4, 0)
    order = call_order(model, _x())[1]
    frozen = freeze(model, "up-to:stem", order)
    assert frozen == ["stem", "stem.0", "stem.1", "stem.2"]
    assert all(p.requires_grad for m in (model.head, model.body) for p in m.parameters())
    assert not any(p.requires_grad for p in model.stem.parameters())
    pool = _model(4, 0)  # no weights: where the last layer with weights before it runs
    assert "head" not in freeze(pool, "up-to:pool", order)
    assert not any(p.requires_grad for p in pool.body.parameters())
    assert all(p.requires_grad for p in pool.head.parameters())
    named = _model(4, 0)  # the head itself, when named
    freeze(named, "up-to:head", order)
    assert not any(p.requires_grad for p in named.parameters())


def test_train_help_says_freeze_order_and_has_trust() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    text = " ".join(res.output.split())
    assert "runs before it in the forward pass" in text
    assert "--trust" in text and "Allow unpickling a whole model" in text


# -- 8. --trust: an init that is a whole pickled model ----------------------------------------
@pytest.mark.filterwarnings("ignore:whole records no preprocessing")
def test_trust_is_a_training_option_passed_to_the_init(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict({"arch": "lenet5", "data": "d", "trust": True})
    assert cfg.trust is True and json.loads(json.dumps(cfg.to_dict()))["trust"] is True
    torch.manual_seed(0)
    whole = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    whole(torch.zeros(1, 3, 8, 8))
    torch.save(whole, tmp_path / "whole.pt")
    with pytest.raises(NetlensError, match="--trust"):
        load_init(tmp_path / "whole.pt", PluginHost())
    lens = load_init(tmp_path / "whole.pt", PluginHost(), trust=True)
    assert all(
        torch.equal(a, b) for a, b in zip(lens.model.parameters(), whole.parameters(), strict=True)
    )


def test_a_run_with_trust_keeps_a_json_plain_record(tmp_path: Path) -> None:
    for k, name in enumerate(("a", "b")):
        (tmp_path / "d" / name).mkdir(parents=True)
        pixels = np.random.default_rng(k).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
        for i, p in enumerate(pixels):
            Image.fromarray(p).save(tmp_path / "d" / name / f"{i}.png")
    result = netlens.train(
        "lenet5",
        str(tmp_path / "d"),
        trust=True,
        epochs=1,
        batch_size=4,
        img_size=32,
        quiet=True,
        workers=0,
        threads=1,
        out=str(tmp_path / "m.pt"),
    )
    assert json.loads(json.dumps(result.record["config"]))["trust"] is True


# -- 9. a model object where an architecture name belongs ------------------------------------
def test_a_model_object_as_arch_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(NetlensError, match="arch takes an architecture name") as err:
        netlens.train(nn.Linear(2, 2), str(tmp_path), epochs=1, out=str(tmp_path / "m.pt"))
    assert "not a Linear object" in str(err.value) and "--init" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "m.pt").exists()
    from netlens.models.factory import check_arch

    with pytest.raises(ModelLoadError, match="not a Linear object"):
        check_arch(nn.Linear(2, 2), PluginHost())  # type: ignore[arg-type]


def test_init_permutes_only_the_classifier_not_a_layer_as_wide_as_the_class_count() -> None:
    from netlens.train.transfer import init_notes

    old_names = [f"c{i}" for i in range(8)]  # 8 classes, and 8 channels in the last BatchNorm
    old_model, model = _model(8, 0), _model(8, 1)
    x = _x()
    new = old_names[::-1]
    init_notes(model, Lens(old_model, classes=old_names), "old.pt", new, call_order(model, x)[1])
    assert torch.equal(model.body[1].weight, old_model.body[1].weight)
    with torch.no_grad():
        torch.testing.assert_close(model(x), old_model(x).flip(1))


def test_train_init_matches_head_rows_by_class_name_end_to_end(tmp_path: Path) -> None:
    from netlens.train.trainer import setup

    for k, name in enumerate(("b", "c", "fusée")):
        (tmp_path / "a" / name).mkdir(parents=True)
        pixels = np.random.default_rng(k).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
        for i, p in enumerate(pixels):
            Image.fromarray(p).save(tmp_path / "a" / name / f"{i}.png")
    fast = {"epochs": 1, "batch_size": 4, "img_size": 16, "workers": 0, "threads": 1}
    first = netlens.train(
        "lenet5", str(tmp_path / "a"), quiet=True, out=str(tmp_path / "a.pt"), **fast
    )
    (tmp_path / "a" / "fusée").rename(tmp_path / "a" / "a rocket")  # now sorts first
    cfg = TrainConfig(
        arch="lenet5",
        data=str(tmp_path / "a"),
        init=str(tmp_path / "a.pt"),
        out=str(tmp_path / "b.pt"),
        **fast,
    )
    s = setup(cfg, PluginHost())
    assert any(
        "matched by class name for 2 of 3 classes, fresh for 1 ('a rocket')" in n for n in s.notes
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before, after = first.model.cpu().eval()(x), s.model.cpu().eval()(x)
    for name in ("b", "c"):
        torch.testing.assert_close(
            after[:, s.splits.classes.index(name)], before[:, ["b", "c", "fusée"].index(name)]
        )
