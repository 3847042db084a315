"""Skipped inputs under torchrun itself exit 0 (torchrun counts any other status as a failed
worker: a traceback, a failed job, a restart); under --distributed's own launcher, and in one
process, they exit 3."""

from __future__ import annotations

import types

import pytest
import typer

from netlens.cli.runner import report_skipped

_COMMON = types.SimpleNamespace(skip_bad=False)


def test_one_process_exits_3(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(typer.Exit) as info:
        report_skipped(["a.png: cannot decode"], _COMMON)
    assert info.value.exit_code == 3


def test_netlens_own_launcher_exits_3(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "netlens-0123456789ab")
    with pytest.raises(typer.Exit) as info:
        report_skipped(["a.png: cannot decode"], _COMMON)
    assert info.value.exit_code == 3


def test_torchrun_itself_exits_0_and_says_why(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "5f1c2d")
    report_skipped(["a.png: cannot decode"], _COMMON)  # no exit
    assert "exit status 0 under torchrun" in capsys.readouterr().err
