"""Warnings and native chatter from dependencies never break the one-line promise (issue 14,
item 5): captured, turned into our own notes where they matter, silent otherwise."""

from __future__ import annotations

import logging
import os
import threading
import warnings

import pytest
import torch
from hostile_inputs import assert_one_clean_line, base_checkpoint
from typer.testing import CliRunner

from netlens.cli.app import app
from netlens.diagnostics import captured_warnings, native_stderr_silenced

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("NETLENS_DEBUG", raising=False)


def test_glyph_and_timm_warnings_become_notes_and_others_stay_raw(capsys):
    glyph = "Glyph 29483 (\\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) X."
    with captured_warnings() as diag:
        warnings.warn(glyph, UserWarning, stacklevel=1)
        warnings.warn(glyph, UserWarning, stacklevel=1)
        renamed = "Mapping deprecated model name vit_old to current vit_new."
        warnings.warn(renamed, FutureWarning, stacklevel=1)
        warnings.warn("Detected pickle protocol 4 in the checkpoint", UserWarning, stacklevel=1)
        logging.getLogger("timm.models").warning("something %s", "odd")
    assert len(diag.notes) == 2
    assert any("猫" in n and "font" in n for n in diag.notes)
    assert any("vit_new" in n for n in diag.notes)
    assert any("pickle protocol" in r for r in diag.raw) and any("odd" in r for r in diag.raw)
    assert capsys.readouterr() == ("", "")


def test_debug_mode_captures_nothing(monkeypatch):
    monkeypatch.setenv("NETLENS_DEBUG", "1")
    with pytest.warns(UserWarning), captured_warnings() as diag:
        warnings.warn("shown", UserWarning, stacklevel=1)
    assert diag.raw == []


def test_native_stderr_is_silenced_and_restored(capfd):
    os.write(2, b"before\n")
    with native_stderr_silenced():
        os.write(2, b"native chatter\n")
        with native_stderr_silenced():  # nested
            os.write(2, b"more chatter\n")
        os.write(2, b"still silenced\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\nafter\n"


def test_native_stderr_from_threads_ends_restored(capfd):
    def work() -> None:
        for _ in range(50):
            with native_stderr_silenced():
                os.write(2, b"x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"


def test_cli_success_turns_a_timm_deprecation_into_a_note(tmp_path):
    import timm

    model = timm.create_model("semnasnet_100", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    res = runner.invoke(app, ["layers", str(tmp_path / "sd.pt"), "--arch", "mnasnet_a1"])
    assert res.exit_code == 0, res.output
    assert "Warning" not in res.stderr and "Mapping deprecated" not in res.stderr
    notes = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(notes) == 1 and "semnasnet_100" in notes[0]


def test_cli_error_after_warnings_is_still_one_line(tmp_path):
    ckpt = base_checkpoint()
    ckpt["state_dict"]["classifier.5.bias"] = torch.zeros(3).to_sparse()
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.warns(UserWarning, match="sparse"):
        torch.load(tmp_path / "m.pt", weights_only=True)  # torch warns while reading it
    res = runner.invoke(app, ["layers", str(tmp_path / "m.pt")])
    assert res.exit_code == 1
    assert "dense CPU tensors" in assert_one_clean_line(res.stderr)


def test_cli_glyph_warning_becomes_one_note(tmp_path):
    import cv2
    import numpy as np

    ckpt = base_checkpoint()
    ckpt["classes"] = ["猫", "犬", "鳥"]
    torch.save(ckpt, tmp_path / "cjk.pt")
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((28, 28), np.uint8))
    res = runner.invoke(
        app, ["cam", str(tmp_path / "cjk.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "Glyph" not in res.stderr and "Warning" not in res.stderr
    fonts = [line for line in res.stderr.splitlines() if "font" in line]
    assert len(fonts) == 1 and fonts[0].startswith("warning:") and "猫" in fonts[0]


def test_python_load_hides_torch_pickle_notices(tmp_path):
    """Not only the CLI: netlens.load itself never lets torch's pickle notices through."""
    import netlens
    from netlens.errors import ModelLoadError

    ckpt = base_checkpoint()
    ckpt["state_dict"]["classifier.5.bias"] = torch.zeros(3).to_sparse()
    torch.save(ckpt, tmp_path / "m.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelLoadError, match="dense CPU"):
            netlens.load(tmp_path / "m.pt")
    assert not [w for w in caught if "sparse" in str(w.message) or "pickle" in str(w.message)]
