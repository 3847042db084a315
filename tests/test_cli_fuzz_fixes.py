"""Inputs a CLI fuzz found mishandled: each refused in one line, or a run that diverged kept
from passing for a complete model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from netlens.cli.app import app
from netlens.errors import NetlensError
from netlens.parallel import check_workers
from netlens.train import TrainConfig

pytest_plugins = ["netlens.testing"]

runner = CliRunner()


def one_line_error(res, *words: str) -> str:  # noqa: ANN001
    assert res.exit_code == 1, res.output
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and "NETLENS_DEBUG" not in text, text
    for word in words:
        assert word in text, text
    return text


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"lr": -1}, "--lr must be a number > 0 and at most 10, not -1"),
        ({"lr": 1e300}, "--lr must be a number > 0 and at most 10, not 1e+300"),
        ({"lr": float("nan")}, "--lr must be"),
        ({"epochs": 0}, "--epochs must be >= 1, not 0"),
        ({"batch_size": 0}, "--batch-size must be >= 1, not 0"),
    ],
)
def test_train_settings_each_get_their_own_message(options, words):
    with pytest.raises(NetlensError) as err:
        TrainConfig(arch="lenet5", data="shapes", **options)
    assert words in str(err.value)
    assert ("--epochs" in str(err.value)) == ("epochs" in options)


def test_train_cli_lr_overflow_and_arch_opt_hint(tmp_path: Path) -> None:
    base = ["train", "--arch", "lenet5", "--data", "nope", "--out", str(tmp_path / "o")]
    one_line_error(runner.invoke(app, [*base, "--lr", "1e300"]), "--lr", "at most 10")
    text = one_line_error(runner.invoke(app, [*base, "--arch-opt", "x"]), "--arch-opt")
    assert "--opt steps" not in text
    assert not (tmp_path / "o").exists()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small image folder (no test split: a finished run's record says complete)."""
    from netlens.data.shapes import write_folder

    return write_folder(tmp_path / "shapes", n=40, size=28, seed=1)[0]


def _train(folder: Path, out: Path, epochs: int):  # noqa: ANN202
    import netlens

    return netlens.train(
        "lenet5",
        str(folder),
        epochs=epochs,
        max_batches=1,
        batch_size=8,
        img_size=28,
        workers=0,
        out=str(out),
        quiet=True,
    )


def test_nan_validation_loss_fails_and_writes_no_checkpoint(folder, tmp_path, monkeypatch):
    import netlens.train.trainer as trainer_mod

    real = trainer_mod._validate
    monkeypatch.setattr(
        trainer_mod, "_validate", lambda s, loader: {**real(s, loader), "loss": float("nan")}
    )
    out = tmp_path / "m.pt"
    with pytest.raises(NetlensError, match="validation loss became nan in epoch 1; lower --lr"):
        _train(folder, out, epochs=1)
    assert not out.exists()


@pytest.mark.parametrize("where", ["validation", "training"])
def test_divergence_after_a_good_epoch_leaves_it_marked_incomplete(
    where, folder, tmp_path, monkeypatch
):
    import netlens.train.trainer as trainer_mod

    real_validate, real_epoch = trainer_mod._validate, trainer_mod._train_epoch
    calls = []

    def validate(s, loader):  # noqa: ANN001, ANN202
        calls.append(1)
        val = real_validate(s, loader)
        return {**val, "loss": float("nan")} if len(calls) == 2 else val

    def train_epoch(s, epoch, progress):  # noqa: ANN001, ANN202
        if epoch == 2:
            raise NetlensError("the loss became nan in epoch 2; lower --lr")
        return real_epoch(s, epoch, progress)

    if where == "validation":
        monkeypatch.setattr(trainer_mod, "_validate", validate)
    else:
        monkeypatch.setattr(trainer_mod, "_train_epoch", train_epoch)
    out = tmp_path / "m.pt"
    with pytest.raises(NetlensError, match="loss became nan in epoch 2"):
        _train(folder, out, epochs=2)
    record = torch.load(out, weights_only=True)["record"]  # epoch 1, kept to resume from
    assert record["best_epoch"] == 1 and len(record["history"]) == 1
    assert not record["complete"]
    if where == "training":  # a run that finishes is complete (there is no test split)
        assert _train(folder, tmp_path / "done.pt", epochs=1).record["complete"]


@pytest.mark.parametrize("tol", [1, 2])
def test_dead_tol_is_a_share_below_one(tol, tiny_lens):
    with pytest.raises(NetlensError, match=f"--dead-tol .* must be below 1, got {tol}"):
        tiny_lens.kernels(dead_tol=tol)
    assert len(tiny_lens.kernels(dead_tol=0.5).table) > 0


def test_dead_tol_cli_is_one_line(tiny_model_file, tmp_path):
    out = tmp_path / "o"
    args = ["kernels", str(tiny_model_file), "--dead-tol", "2", "--out", str(out)]
    one_line_error(runner.invoke(app, args), "--dead-tol", "below 1")
    assert not out.exists()


def test_channels_given_twice_or_with_a_count_are_refused(tiny_lens, sample_images):
    with pytest.raises(NetlensError, match="features: channel 0 is given twice"):
        tiny_lens.run("features", sample_images, channels=[0, 0, 1])
    with pytest.raises(NetlensError, match="either --channels or --top/-k .* not both"):
        tiny_lens.run("features", sample_images, channels=[0], top=3)
    r = tiny_lens.run("features", sample_images, channels=[0, 1])
    assert r.meta["channels"] == [0, 1]
    data = (torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    with pytest.raises(NetlensError, match="top-activations: channel 1 is given twice"):
        tiny_lens.run("top-activations", data, channels=[1, 0, 1], k=2)
    with pytest.raises(NetlensError, match="either --channels or --max-channels"):
        tiny_lens.run("top-activations", data, channels=[1], max_channels=3)


def test_features_cli_refusals_are_one_line(tiny_model_file, sample_images, tmp_path):
    out = tmp_path / "o"
    base = ["features", str(tiny_model_file), str(sample_images[0]), "--out", str(out)]
    one_line_error(runner.invoke(app, [*base, "--channels", "0,0"]), "given twice")
    one_line_error(runner.invoke(app, [*base, "--channels", "0", "-k", "3"]), "not both")
    assert not out.exists()


def test_report_refuses_bad_data_and_empty_sections(tiny_model_file, sample_images, tmp_path):
    out = tmp_path / "o"
    base = ["report", str(tiny_model_file), str(sample_images[0]), "--out", str(out)]
    res = runner.invoke(app, [*base, "-s", "card", "-d", str(tmp_path / "no-such-folder")])
    one_line_error(res, "no-such-folder", "neither a folder")
    one_line_error(runner.invoke(app, [*base, "-s", ","]), "--sections names no section")
    assert not out.exists()


def test_worker_range_says_what_the_flag_takes() -> None:
    with pytest.raises(NetlensError) as err:
        check_workers("--threads", 100_000)
    assert "at most" in str(err.value) and "0 to" not in str(err.value)
    with pytest.raises(NetlensError, match="--workers -1 is out of range: give 0 or more"):
        check_workers("--workers", -1)
    assert check_workers("--workers", 0) == 0


def test_an_empty_out_a_nameless_zoo_model_and_a_loop_are_refused(tmp_path: Path, monkeypatch):
    """``-o ''`` (an unset shell variable) wrote into the current folder; ``zoo:`` loaded the
    default model; ``-o`` a symlink loop ended in a raw RuntimeError."""
    monkeypatch.chdir(tmp_path)
    one_line_error(runner.invoke(app, ["cam", "-o", "", "-q"]), "--out is empty")
    assert list(tmp_path.iterdir()) == []
    one_line_error(runner.invoke(app, ["layers", "zoo:"]), "no zoo model ''")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    one_line_error(runner.invoke(app, ["cam", "-o", "loop", "-q"]), "loop is a symlink loop")


def test_build_options_with_a_zoo_model_are_refused() -> None:
    """``--arch``, ``--arch-kwargs`` and ``--num-classes`` beside a zoo model were ignored
    without a word, as if they had been applied."""
    one_line_error(runner.invoke(app, ["layers", "--arch", "resnet18"]), "--arch builds a model")
    res = runner.invoke(app, ["layers", "zoo:mnist5k-lenet5", "--num-classes", "3"])
    one_line_error(res, "--num-classes builds a model", "zoo model")


def test_a_long_value_is_quoted_back_in_part() -> None:
    """A 3,000-character value was echoed whole: a 3,124-character error line."""
    line = one_line_error(runner.invoke(app, ["cam", "-m", "x" * 3000]), "unknown CAM method")
    assert len(line) < 400 and "x" * 100 + "…'" in line


def test_a_missing_csv_list_is_not_found() -> None:
    """A mistyped ``-d val.csv`` was "neither a folder, a .csv list nor a dataset name"."""
    res = runner.invoke(app, ["stats", "-d", "no/such/val.csv", "-q"])
    one_line_error(res, "data list no/such/val.csv not found")


def test_skip_bad_and_strict_together_are_refused() -> None:
    """Both were accepted and --strict won without a word."""
    one_line_error(runner.invoke(app, ["cam", "--skip-bad", "--strict", "-q"]), "give one of them")


def test_an_option_given_twice_is_refused() -> None:
    """``--opt method=gradcam --opt method=scorecam``: the last won without a word."""
    res = runner.invoke(app, ["run", "cam", "--opt", "method=gradcam", "--opt", "method=scorecam"])
    one_line_error(res, "option 'method' is given twice")


def test_a_top_beyond_the_classes_is_said() -> None:
    """``--top 10**12`` was capped to the model's classes without a word."""
    import netlens
    from netlens.errors import NetlensWarning

    lens = netlens.load()
    with pytest.warns(NetlensWarning, match="top=9 is more than the model's 5 classes"):
        cam = lens.cam(lens.example(), top=9)
    assert cam.arrays["targets"].shape == (1, 5)
