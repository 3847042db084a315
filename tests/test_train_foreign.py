"""``netlens train`` on data and models as people bring them: split folders as exports spell
them, classes missing from a split, unreadable images, user architectures, grayscale models,
fixed-size ViTs, torchvision's auxiliary heads. Tiny generated images, CPU, one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.train import TrainConfig

NETS = """
import torch
from torch import nn


class Net(nn.Module):  # the usual signature: num_classes only
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class Tiny(nn.Module):
    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class HeadFirst(Tiny):  # the classifier defined before the features
    def __init__(self, num_classes=10, in_chans=3):
        nn.Module.__init__(self)
        self.classifier = nn.Linear(4, num_classes)
        self.features = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


class BN1dHead(Tiny):  # BatchNorm after pooling: cannot train on a batch of one image
    def __init__(self, num_classes=10, in_chans=3):
        super().__init__(num_classes, in_chans)
        self.fc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes))


class Fixed10(Tiny):  # no num_classes: always 10 outputs
    def __init__(self, in_chans=3):
        super().__init__(10, in_chans)


class Sigmoid1(Tiny):  # one logit for two classes
    def __init__(self, in_chans=3):
        super().__init__(1, in_chans)
"""

FAST = {"epochs": 1, "batch_size": 8, "img_size": 8, "workers": 0, "threads": 1, "quiet": True}


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _images(folder: Path, n: int, seed: int, mode: str = "RGB") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
        img.convert(mode).save(folder / f"{i:02d}.png")


def _folder(root: Path, layout: dict[str, dict[str, int]], mode: str = "RGB") -> Path:
    """``{"train": {"a": 4, ...}, "val": {...}}``; split "" for class folders directly in root."""
    for s, (split, classes) in enumerate(layout.items()):
        for c, (name, n) in enumerate(classes.items()):
            _images(root / split / name, n, seed=10 * s + c, mode=mode)
    return root


def test_val_split_is_labelled_by_the_training_classes(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"train": {"a": 4, "b": 4, "c": 4}, "val": {"a": 2, "c": 3}})
    r = netlens.train(f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), **FAST)
    rows = np.array(r.record["val"]["confusion"]).sum(1).tolist()
    assert rows == [2, 0, 3]  # c's images are class c, not the second class (b)


def test_a_val_class_that_training_lacks_is_refused_before_training(
    tmp_path: Path, nets: Path
) -> None:
    root = _folder(tmp_path / "d", {"train": {"a": 4, "b": 4}, "val": {"a": 2, "zebra": 2}})
    with pytest.raises(NetlensError, match="zebra"):
        netlens.train(f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert not (tmp_path / "m.pt").exists()
    res = CliRunner().invoke(
        app, ["train", "--arch", f"{nets}:Tiny", "-d", str(root), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and "zebra" in res.output and "Traceback" not in res.output


def test_train_and_test_without_val_validates_on_a_holdout_of_train(
    tmp_path: Path, nets: Path
) -> None:
    root = _folder(tmp_path / "d", {"train": {"a": 10, "b": 10}, "test": {"a": 3, "b": 4}})
    r = netlens.train(f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert r.record["val"]["n"] == 2  # 10 % of train/
    assert r.record["test"]["n"] == 7  # test/ is kept for the final evaluation


@pytest.mark.parametrize(("train", "val"), [("train", "valid"), ("Train", "Val")])
def test_split_folders_as_exports_spell_them(
    tmp_path: Path, nets: Path, train: str, val: str
) -> None:
    root = _folder(tmp_path / "d", {train: {"a": 4, "b": 4}, val: {"a": 3, "b": 2}})
    r = netlens.train(f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert r.record["val"]["n"] == 5 and r.record["history"][0]["images"] == 8


def test_freeze_backbone_finds_the_head_by_execution_order(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"": {"a": 5, "b": 5}})
    r = netlens.train(
        f"{nets}:HeadFirst", str(root), out=str(tmp_path / "m.pt"), freeze="backbone", **FAST
    )
    trainable = [n for n, p in r.model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert "classifier" not in r.record["frozen"]


def test_resume_refuses_other_settings_but_not_threads(tmp_path: Path, monkeypatch) -> None:
    import netlens.train.trainer as trainer_mod
    from netlens.train import run

    out = tmp_path / "r.pt"
    cfg = TrainConfig(
        arch="lenet5", data="mnist5k", epochs=2, batch_size=16, max_batches=1, out=str(out)
    )
    real = trainer_mod._train_epoch

    def stop_in_epoch_2(s, epoch, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(s, epoch, progress)

    monkeypatch.setattr(trainer_mod, "_train_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, quiet=True)
    monkeypatch.setattr(trainer_mod, "_train_epoch", real)
    for key, value in (("seed", 1), ("lr", 0.1), ("img_size", 20), ("flip", True)):
        changed = TrainConfig(**{**cfg.to_dict(), key: value, "resume": True})
        with pytest.raises(NetlensError, match=f"with {key}="):
            run(changed, quiet=True)
    resumed = run(TrainConfig(**{**cfg.to_dict(), "threads": 1, "resume": True}), quiet=True)
    assert [r["epoch"] for r in resumed.record["history"]] == [1, 2]


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8, 100])
def test_one_cycle_runs_any_number_of_steps(steps: int) -> None:
    from netlens.train.optim import make_optimizer

    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(arch="x", data="y", lr=0.1)
    opt, sched = make_optimizer(cfg, model, steps)
    for _ in range(steps):
        opt.step()
        sched.step()
    if steps != 4:  # the usual warm-up share, as before
        assert sched._schedule_phases[0]["end_step"] == 0.25 * steps - 1


def test_user_architectures_num_classes_only_and_wrong_widths(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"": {"cat": 5, "dog": 5}})
    r = netlens.train(f"{nets}:Net", str(root), out=str(tmp_path / "net.pt"), **FAST)
    assert "in_chans" not in netlens.load(r.path, arch=f"{nets}:Net").card["arch_kwargs"]
    for arch, says in (("Fixed10", "gives 10 outputs"), ("Sigmoid1", "single-logit")):
        with pytest.raises(NetlensError, match=says):
            netlens.train(f"{nets}:{arch}", str(root), out=str(tmp_path / f"{arch}.pt"), **FAST)
        assert not (tmp_path / f"{arch}.pt").exists()  # refused before training


def test_a_last_training_batch_of_one_image_is_left_out(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"train": {"a": 5, "b": 4}, "val": {"a": 2, "b": 2}})
    r = netlens.train(f"{nets}:BN1dHead", str(root), out=str(tmp_path / "m.pt"), **FAST)
    assert r.record["history"][0]["images"] == 8
    r = netlens.train(
        f"{nets}:BN1dHead", str(root), out=str(tmp_path / "m2.pt"), **{**FAST, "batch_size": 5}
    )
    assert r.record["history"][0]["images"] == 9  # a last batch of 4: kept


def test_unreadable_images_are_skipped_and_reported(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"": {"a": 6, "b": 6}})
    (root / "a" / "zz_bad.png").write_text("garbage\n")
    r = netlens.train(
        f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), **{**FAST, "workers": 1}
    )
    assert len(r.skipped) == 1 and "zz_bad.png" in r.skipped[0]
    assert r.record["skipped"] == r.skipped
    args = ["train", "--arch", f"{nets}:Tiny", "-d", str(root), "--epochs", "1"]
    args += ["--img-size", "8", "--batch-size", "8", "--workers", "0", "-q"]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "o1")])
    assert res.exit_code == 3 and "skipped:" in res.output and "zz_bad.png" in res.output
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "o2"), "--skip-bad", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["skipped"]) == 1
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "o3"), "--strict"])
    assert res.exit_code == 1 and "zz_bad.png" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_in_chans_1_trains_on_grayscale_images(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"": {"a": 5, "b": 5}}, mode="L")
    r = netlens.train(
        f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), arch_kwargs={"in_chans": 1}, **FAST
    )
    assert torch.load(r.path, weights_only=True)["preprocess"]["channels"] == 1
    assert netlens.load(r.path, arch=f"{nets}:Tiny").transform.channels == 1


def test_fixed_size_vits_are_built_for_the_image_size(tmp_path: Path) -> None:
    from netlens.plugins.manager import PluginHost
    from netlens.train.build import arch_kwargs
    from netlens.train.datasets import resolve_splits

    root = _folder(tmp_path / "d", {"": {"a": 5, "b": 5}})
    r = netlens.train(
        "vit_tiny_patch16_224",
        str(root),
        out=str(tmp_path / "m.pt"),
        arch_kwargs={"depth": 1},
        max_batches=1,
        **{**FAST, "img_size": 32},
    )
    assert netlens.load(r.path).card["arch_kwargs"]["img_size"] == 32
    host = PluginHost()
    splits = resolve_splits(str(root), host, preprocess=netlens.images.Preprocess(size=32))
    tv = arch_kwargs(TrainConfig(arch="tv:vit_b_16", data=str(root)), splits, host)
    assert tv["image_size"] == 32


def test_torchvision_googlenet_trains_without_its_aux_heads(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"": {"a": 4, "b": 4}})
    r = netlens.train(
        "tv:googlenet",
        str(root),
        out=str(tmp_path / "g.pt"),
        max_batches=1,
        **{**FAST, "img_size": 32},
    )
    lens = netlens.load(r.path)
    assert lens.card["arch_kwargs"]["aux_logits"] is False
    assert not any(k.startswith("aux") for k in lens.model.state_dict())


def test_out_an_existing_folder_writes_model_pt_in_it(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"": {"a": 5, "b": 5}})
    (tmp_path / "out").mkdir()
    r = netlens.train(f"{nets}:Tiny", str(root), out=str(tmp_path / "out"), **FAST)
    assert r.path == tmp_path / "out" / "model.pt" and r.path.is_file()


def test_validation_loss_is_plain_cross_entropy_under_label_smoothing(
    tmp_path: Path, nets: Path
) -> None:
    root = _folder(tmp_path / "d", {"train": {"a": 4, "b": 4}, "val": {"a": 3, "b": 3}})
    r = netlens.train(
        f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), label_smoothing=0.3, **FAST
    )
    lens = netlens.load(r.path, arch=f"{nets}:Tiny")
    ds = lens.dataset(str(root / "val"))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(r.model.eval()(x), y).item()
    assert r.record["val"]["loss"] == pytest.approx(plain, rel=1e-4)


def test_help_states_the_ranges_the_config_accepts() -> None:
    import typer

    cmd = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    params = {p.name: p for p in cmd.params}
    assert "under 1" in params["label_smoothing"].help and "> 0" in params["lr"].help
    res = CliRunner().invoke(app, ["train", "--arch", "lenet5", "-d", "x", "--lr", "0"])
    assert res.exit_code == 1 and "--lr" in res.output


def test_splits_without_a_training_split_are_refused_as_such(tmp_path: Path, nets: Path) -> None:
    root = _folder(tmp_path / "d", {"Val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}})
    with pytest.raises(NetlensError, match="no training split"):
        netlens.train(f"{nets}:Tiny", str(root), out=str(tmp_path / "m.pt"), **FAST)
