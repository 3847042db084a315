"""The trainer end to end on CPU: a tiny run, the checkpoint loads back, metrics are recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import netlens
from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.models import archs
from netlens.train.augment import augment_batch
from netlens.train.evaluation import confusion_matrix, scores
from netlens.train.recipes import RECIPES
from netlens.train.transfer import count_params, freeze, head_name


def test_scores_match_a_hand_computed_example() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = scores(cm)
    precision = np.mean([2 / 2, 1 / 2, 1 / 2])
    recall = np.mean([2 / 3, 1 / 2, 1 / 1])
    f1 = np.mean([2 * a * b / (a + b) for a, b in [(1, 2 / 3), (0.5, 0.5), (0.5, 1)]])
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(precision)
    assert s["recall"] == pytest.approx(recall)
    assert s["f1"] == pytest.approx(f1)


def test_augment_shifts_and_flips_whole_images() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, flip=False, crop=1, generator=g)
    assert out.shape == x.shape
    for i in range(2):  # each output is a shifted window of the zero-padded input
        padded = torch.nn.functional.pad(x[i, 0], (1, 1, 1, 1))
        windows = [padded[r : r + 4, c : c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i, 0], w) for w in windows)
    flipped = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_freeze_backbone_leaves_only_the_head_trainable() -> None:
    m = archs.resnet(num_classes=4, widths=(8, 16, 32))
    assert head_name(m) == "fc"
    frozen = freeze(m, "backbone")
    total, trainable = count_params(m)
    assert trainable == sum(p.numel() for p in m.fc.parameters()) and total > trainable
    assert "layer1" in frozen and "fc" not in frozen
    m2 = archs.resnet(num_classes=4, widths=(8, 16, 32))
    freeze(m2, "up-to:layer2")
    assert not any(p.requires_grad for p in m2.layer2.parameters())
    assert all(p.requires_grad for p in m2.layer3.parameters())
    with pytest.raises(NetlensError, match="did you mean"):
        freeze(m2, "up-to:layr3")


def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    result = netlens.train(
        "lenet5",
        "mnist5k",
        epochs=2,
        batch_size=32,
        max_batches=6,
        out=str(out),
        quiet=True,
        seed=1,
    )
    assert result.path == out and out.is_file()
    assert not (tmp_path / "tiny.last.pt").exists()  # finished runs leave no resume state
    rec = result.record
    assert [r["epoch"] for r in rec["history"]] == [1, 2]
    for row in rec["history"]:
        assert 0 <= row["val_accuracy"] <= 1 and row["train_loss"] > 0 and row["images"] == 192
    assert rec["test"]["n"] == 6 * 64 and len(rec["test"]["confusion"]) == 10
    assert rec["device"].startswith("cpu") and rec["wall_time_s"] > 0
    lens = netlens.load(out)
    assert lens.classes == [str(d) for d in range(10)]
    assert lens.transform.size == (28, 28) and lens.card["arch"] == "lenet5"
    assert lens.card["record"]["epochs"] == 2
    for k, v in lens.model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k])


def test_resume_continues_an_interrupted_run(tmp_path: Path, monkeypatch) -> None:
    import netlens.train.trainer as trainer_mod
    from netlens.train import TrainConfig, run

    out = tmp_path / "r.pt"
    cfg = TrainConfig(
        arch="lenet5", data="mnist5k", epochs=2, batch_size=32, max_batches=3, out=str(out)
    )
    with pytest.raises(NetlensError, match="no saved state"):
        run(TrainConfig(**{**cfg.to_dict(), "resume": True}), quiet=True)
    real_epoch = trainer_mod._train_epoch

    def crash_in_epoch_2(ctx, epoch, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(ctx, epoch, progress)

    monkeypatch.setattr(trainer_mod, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, quiet=True)
    assert trainer_mod.last_path(out).is_file()
    partial = torch.load(out, weights_only=True)["record"]  # best epoch so far, already saved
    assert not partial["complete"] and len(partial["history"]) == 1
    monkeypatch.setattr(trainer_mod, "_train_epoch", real_epoch)
    with pytest.raises(NetlensError, match="epochs=2"):
        run(TrainConfig(**{**cfg.to_dict(), "epochs": 3, "resume": True}), quiet=True)
    resumed = run(TrainConfig(**{**cfg.to_dict(), "resume": True}), quiet=True)
    assert [r["epoch"] for r in resumed.record["history"]] == [1, 2]
    assert resumed.record["history"][1]["images"] == 96
    straight = run(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "s.pt")}), quiet=True)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-5), k


def test_cli_train_json_with_init_and_freeze(tmp_path: Path) -> None:
    base = tmp_path / "base.pt"
    netlens.train("lenet5", "mnist5k", epochs=1, max_batches=2, out=str(base), quiet=True)
    out = tmp_path / "ft.pt"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--arch",
            "lenet5",
            "--data",
            "mnist5k",
            "--epochs",
            "1",
            "--max-batches",
            "2",
            "--init",
            str(base),
            "--freeze",
            "backbone",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["trainable_params"] == 84 * 10 + 10 and doc["params"] > doc["trainable_params"]
    ft = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    start = torch.load(base, weights_only=True)["state_dict"]
    assert torch.equal(ft["conv1.weight"], start["conv1.weight"])  # frozen, copied from --init
    assert not torch.equal(ft["fc3.weight"], start["fc3.weight"])


def test_cli_train_bad_input_is_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", "--arch", "lenet5", "--data", "nope", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 1 and "neither a folder" in res.output
    res = runner.invoke(app, ["train", "--recipe", "shapes-alconv"])
    assert res.exit_code == 1 and "shapes-allconv" in res.output


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_runs_a_few_batches(name: str, tmp_path: Path, monkeypatch) -> None:
    """Every zoo recipe trains for a few batches on CPU (shapes on a small generated split)."""
    import netlens.data.shapes as shapes

    real = shapes.shapes_dataset
    monkeypatch.setattr(
        shapes, "shapes_dataset", lambda split="test", **kw: real(split, n=kw.pop("n", 64), **kw)
    )
    if RECIPES[name].config["data"] == "fashion-mnist":
        from netlens.data import fashion_mnist as fm

        try:
            fm.find_root()
        except NetlensError:
            pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
        read = fm.read_split
        monkeypatch.setattr(fm, "read_split", lambda part, root=None: [a[:300] for a in read(part)])
        monkeypatch.setattr(fm, "VAL_SIZE", 100)
    result = netlens.train(
        recipe=name, epochs=1, max_batches=2, batch_size=16, out=str(tmp_path / "m.pt"), quiet=True
    )
    assert result.record["config"]["arch"] == RECIPES[name].config["arch"]
    assert result.record["history"][0]["images"] == 32
    assert netlens.load(tmp_path / "m.pt").card["arch"] == RECIPES[name].config["arch"]


def test_cli_train_on_an_image_folder(tmp_path: Path) -> None:
    from netlens.data.shapes import CLASSES, write_folder

    root, _ = write_folder(tmp_path / "shapes", n=40, size=40, seed=3)
    out = tmp_path / "folder.pt"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--arch",
            "allconv",
            "--data",
            str(root),
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--arch-opt",
            "widths=[8,16]",
            "--arch-opt",
            "depths=[1,1]",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["test"] is None and doc["val"]["n"] == 4  # a seeded 10 % hold-out
    lens = netlens.load(out / "model.pt")
    assert lens.classes == sorted(CLASSES) and lens.transform.size == (32, 32)
    assert lens.card["arch_kwargs"]["widths"] == [8, 16]
    # --init with the same arch inherits its architecture options; --freeze keeps only the head
    ft = tmp_path / "ft.pt"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--arch",
            "allconv",
            "--data",
            str(root),
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--init",
            str(out / "model.pt"),
            "--freeze",
            "backbone",
            "--out",
            str(ft),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["trainable_params"] == 16 * 5 + 5
    assert netlens.load(ft / "model.pt").card["arch_kwargs"]["widths"] == [8, 16]


def test_train_without_data_says_which_flag_is_missing(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--arch", "lenet5", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "no data given (--arch NAME --data DATA, or --recipe NAME" in res.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(NetlensError, match="no arch and no data given"):
        netlens.train()
